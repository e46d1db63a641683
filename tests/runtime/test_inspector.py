"""The torch-free Inspector against the torch run it was exported from, and its engine selection."""

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from npgmf_edge.data import read_image
from npgmf_edge.detector import RunDetector
from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import Inspector, read_manifest
from npgmf_edge.runtime.backends import tensorrt as trt_backend
from npgmf_edge.runtime.backends.registry import open_backend

IMAGES = 10


@pytest.fixture(scope="module")
def torch_inspections(tiny_run):
    run, dataset = tiny_run
    paths = [s.image_path for s in dataset.test[::6]][:IMAGES]
    return paths, RunDetector(run).inspect(paths)


@pytest.mark.parametrize("kind", ["faiss", "graph"])
def test_inspector_gives_the_torch_run_scores_maps_and_verdicts(kind, request, torch_inspections) -> None:
    paths, expected = torch_inspections
    with Inspector.open(request.getfixturevalue(f"{kind}_bundle"), precision="fp32") as inspector:
        got = inspector.inspect(paths)
    for e, g in zip(expected, got, strict=True):
        assert g.score == pytest.approx(e.score, rel=1e-5)
        assert g.verdict == e.verdict
        assert g.anomaly_map.shape == e.anomaly_map.shape == (256, 256)
        assert np.abs(g.anomaly_map - e.anomaly_map).max() <= 1e-4


def test_arrays_single_images_and_batches_beyond_max_batch_agree(faiss_bundle, torch_inspections) -> None:
    paths, expected = torch_inspections
    with Inspector.open(faiss_bundle) as inspector:
        single = inspector.inspect(paths[0])
        arrays = inspector.inspect([read_image(p) for p in paths])  # 10 images, max batch 8: two calls
    assert len(single) == 1 and single[0].score == pytest.approx(expected[0].score, rel=1e-5)
    assert [a.score for a in arrays] == pytest.approx([e.score for e in expected], rel=1e-5)


def test_one_inspector_shared_by_threads_equals_sequential_use(faiss_bundle, torch_inspections) -> None:
    paths, _ = torch_inspections
    with Inspector.open(faiss_bundle, threads=1) as inspector:
        sequential = [inspector.inspect([p])[0].score for p in paths]
        results: dict[int, float] = {}

        def work(indices: list[int]) -> None:
            for i in indices:
                results[i] = inspector.inspect([paths[i]])[0].score

        threads = [threading.Thread(target=work, args=(list(range(k, len(paths), 4)),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(len(paths))] == sequential


CHILD = """
import importlib.abc, sys
class Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "open_clip", "torchvision"):
            raise ImportError(f"{name} is forbidden in the runtime")
sys.meta_path.insert(0, Forbidden())
from npgmf_edge.runtime import Inspector
inspector = Inspector.open(sys.argv[1])
print(" ".join(repr(i.score) for i in inspector.inspect(sys.argv[2:])))
"""


def test_the_runtime_inspects_a_bundle_with_torch_timm_and_open_clip_unimportable(
    faiss_bundle, torch_inspections
) -> None:
    paths, expected = torch_inspections
    args = [sys.executable, "-c", CHILD, str(faiss_bundle), *map(str, paths[:3])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = [float(s) for s in done.stdout.split()]
    assert scores == pytest.approx([e.score for e in expected[:3]], rel=1e-5)


def test_an_odd_sized_image_gets_its_map_at_its_own_resolution(faiss_bundle, tmp_path: Path) -> None:
    image = np.full((90, 70, 3), 128, np.uint8)
    with Inspector.open(faiss_bundle) as inspector:
        (result,) = inspector.inspect([image])
    assert result.anomaly_map.shape == (90, 70)
    assert np.isfinite(result.score)
    cv2.imwrite(str(tmp_path / "odd.png"), image)


def test_a_precision_the_bundle_lacks_is_named(graph_bundle) -> None:
    with pytest.raises(BundleError, match=r"holds no fp16 graph \(it has: fp32, int8\); re-export"):
        Inspector.open(graph_bundle, precision="fp16")


FACTS = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch):
    """TensorRT functions replaced by recorders: the selection logic runs without a GPU."""
    calls: dict[str, list] = {"build": [], "open": []}
    monkeypatch.setattr(trt_backend, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_backend, "device_facts", lambda: dict(FACTS))
    monkeypatch.setattr(trt_backend, "build_engine", lambda onnx, engine, **kw: calls["build"].append(engine))
    monkeypatch.setattr(trt_backend, "engine_from_path", lambda engine, spec: calls["open"].append(engine))
    monkeypatch.setattr(trt_backend, "TensorRTBackend", lambda engine, spec: None)
    return calls


def _with_engine(manifest, **facts):
    spec = manifest.graphs["fp32"]
    recorded = {
        **FACTS,
        "file": "model.fp32.recorded.engine",
        "precision": "fp32",
        "onnx_sha256": manifest.raw["files"][spec.file],
        "max_batch": manifest.max_batch,
        "input_shape": list(spec.input_shape),
        **facts,
    }
    return manifest.__class__(**{**manifest.__dict__, "engines": {"fp32": recorded}})


def test_an_engine_built_for_this_gpu_and_tensorrt_is_used_as_is(faiss_bundle, fake_tensorrt) -> None:
    manifest = _with_engine(read_manifest(faiss_bundle))
    open_backend(manifest, "fp32", backend="tensorrt")
    assert fake_tensorrt == {"build": [], "open": [faiss_bundle / "model.fp32.recorded.engine"]}


@pytest.mark.parametrize("facts", [{"tensorrt_version": "10.0.1.6"}, {"compute_capability": "8.6"}])
def test_an_engine_of_another_tensorrt_or_gpu_is_rebuilt_here(faiss_bundle, fake_tensorrt, facts) -> None:
    manifest = _with_engine(read_manifest(faiss_bundle), **facts)
    open_backend(manifest, "fp32", backend="tensorrt")
    sha = manifest.raw["files"]["model.fp32.onnx"]
    expected = faiss_bundle / f"model.fp32.trt10.13.3.9.sm89.{sha[:12]}.engine"
    assert fake_tensorrt == {"build": [expected], "open": [expected]}


def test_without_tensorrt_the_engine_path_is_refused_with_the_reason(faiss_bundle, monkeypatch) -> None:
    monkeypatch.setattr(trt_backend, "tensorrt_unavailable_reason", lambda: "TensorRT cannot be imported")
    with pytest.raises(BundleError, match="TensorRT cannot be imported; use --backend onnxruntime"):
        Inspector.open(faiss_bundle, backend="tensorrt")
