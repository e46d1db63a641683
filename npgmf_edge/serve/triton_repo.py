"""`npgmf-edge triton-repo`: a bundle's single graph as a standard Triton model repository.

For plants that run Triton's own containers: no Python in the hot path. A `--knn graph` bundle's one ONNX
graph (image -> fused map + image score) runs on Triton's onnxruntime backend; a TensorRT engine for that
precision is added as a `tensorrt_plan` model too:

    OUT/
      <name>/config.pbtxt       platform "onnxruntime_onnx"
      <name>/1/model.onnx
      <name>_trt/config.pbtxt   platform "tensorrt_plan" (only with an engine; tied to its GPU + TensorRT)
      <name>_trt/1/model.plan

The input is float32 NCHW raw RGB pixels at the bundle's size (the client resizes). The verdict's threshold
travels in each model's `parameters` (with the false-alarm rate, precision, category, manifest SHA-256): a
client reads it once from GET /v2/models/<name>/config and compares `image_score > threshold` itself,
rather than an ensemble putting Python back in the hot path. A `--knn faiss` bundle is refused (its search
runs outside the graph). Written into a staging folder and renamed into place.

Example:
    >>> write_triton_repo(Path("bundle"), Path("model_repository"), RepoOptions(model_name="tray"))
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npgmf_edge.errors import BundleError, ConfigError
from npgmf_edge.fileio import atomic_directory
from npgmf_edge.progress import Log
from npgmf_edge.runtime.manifest import Manifest, read_manifest

VERSION = "1"  # a new bundle goes in as the next version folder; see docs/SERVE.md
TRT_SUFFIX = "_trt"
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}


@dataclass
class RepoOptions:
    """Which graph, under what name, and how Triton batches it."""

    precision: str | None = None
    model_name: str = "npgmf"
    max_queue_delay_us: int = 2000
    instances: int = 1

    def validate(self) -> None:
        if not self.model_name or not all(c.isalnum() or c in "._-" for c in self.model_name):
            raise ConfigError(f"model name {self.model_name!r}: use letters, digits, '.', '_' or '-'")
        if self.max_queue_delay_us < 0 or self.instances < 1:
            raise ConfigError("--max-queue-delay-us must be >= 0 and --instances >= 1")


def _tensor(name: str, shape: list[int], data_type: str, extra: str = "") -> str:
    """One input/output entry. A per-image scalar (shape [] after the batch axis) is declared as dims [1]
    with `reshape { shape: [] }`, Triton's way of saying the model itself has shape [batch]."""
    if shape:
        dims = f"dims: [ {', '.join(str(d) for d in shape)} ]"
    else:
        dims = "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n{extra}    {dims}\n  }}'


def _parameters(values: dict[str, Any]) -> str:
    return "\n".join(
        f'parameters: {{ key: "{key}" value: {{ string_value: {json.dumps(str(value))} }} }}'
        for key, value in values.items()
    )


def model_config(
    manifest: Manifest, precision: str, name: str, platform: str, options: RepoOptions, kind: str
) -> str:
    """config.pbtxt text for one model of `manifest`'s `precision` graph."""
    spec = manifest.graphs[precision]
    entry = manifest.raw["graphs"][precision]
    input_type = TRITON_TYPES[entry["input"].get("dtype", "float32")]
    inputs = _tensor(spec.input_name, list(spec.input_shape), input_type, "    format: FORMAT_NCHW\n")
    outputs = ",\n".join(_tensor(out, list(shape), "TYPE_FP32") for out, shape in spec.outputs.items())
    calibration = manifest.raw["calibration"][precision]
    parameters = {
        "threshold": repr(float(manifest.calibration[precision].threshold)),
        "false_alarm_rate": calibration.get("false_alarm_rate", ""),
        "precision": precision,
        "score_output": "image_score",
        "verdict_rule": "anomalous when image_score > threshold; a non-finite score is an error",
        "input_contract": "float32 NCHW raw RGB in [0, 255] at the bundle's size; resize on the client",
        "category": manifest.category,
        "bundle_manifest_sha256": manifest.raw.get("manifest_sha256", ""),
        "toolkit_version": manifest.toolkit_version,
    }
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {manifest.max_batch}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}\n"
        f"instance_group [ {{ count: {options.instances} kind: {kind} }} ]\n"
        f"{_parameters(parameters)}\n"
    )


def check_config_text(text: str, where: str = "config.pbtxt"):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf (tritonclient's copy of
    model_config.proto); ConfigError naming the file when it does not parse. Returns the message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{where} does not match Triton's model configuration schema: {exc}") from exc


def _schema_check_available() -> bool:
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def write_triton_repo(bundle: Path, out: Path, options: RepoOptions, log: Log | None = None) -> dict:
    """Write the model repository for `bundle` at `out` (replaced only when complete); returns a summary."""
    log = log or (lambda message: None)
    options.validate()
    manifest = read_manifest(Path(bundle))
    if manifest.knn != "graph":
        raise BundleError(
            f"{bundle} is a --knn {manifest.knn} bundle: its nearest-neighbour search runs outside the "
            "graph, so Triton cannot serve the graph alone; re-export with --knn graph, or serve it with "
            "`npgmf-edge serve`"
        )
    precision = options.precision or manifest.precisions[0]
    if precision not in manifest.graphs:
        raise BundleError(
            f"{bundle} holds no {precision} graph (it has: {', '.join(manifest.precisions)}); "
            f"re-export with --precision {precision}"
        )
    spec = manifest.graphs[precision]
    models = {options.model_name: ("onnxruntime_onnx", "KIND_CPU", spec.file, "model.onnx")}
    engine = manifest.engines.get(precision)
    if engine is not None:
        models[options.model_name + TRT_SUFFIX] = ("tensorrt_plan", "KIND_GPU", engine["file"], "model.plan")
    check = _schema_check_available()

    def fill(staging: Path) -> None:
        for name, (platform, kind, source, target) in models.items():
            folder = staging / name / VERSION
            folder.mkdir(parents=True)
            shutil.copyfile(manifest.root / source, folder / target)
            text = model_config(manifest, precision, name, platform, options, kind)
            if check:
                check_config_text(text, f"{name}/config.pbtxt")
            (staging / name / "config.pbtxt").write_text(text)
            log(f"{name}: {platform} from {source}")

    atomic_directory(Path(out), fill)
    return {
        "repository": str(out),
        "models": {name: platform for name, (platform, *_rest) in models.items()},
        "precision": precision,
        "threshold": manifest.calibration[precision].threshold,
        "max_batch_size": manifest.max_batch,
        "input": f"{spec.input_name} float32 {list(spec.input_shape)} (NCHW, raw RGB in [0, 255])",
        "schema_checked": check,
    }
