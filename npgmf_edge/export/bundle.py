"""`npgmf-edge export`: a trained run -> a self-contained deployable bundle (SPEC §5).

    load_run -> InspectionNet -> model.fp32.onnx (simplified)          pixels -> logical map, patch features
      per precision: fp32 | fp16 (FP32 islands) | int8 (Q/DQ, calibrated on normal training images)
        -> maps of that graph on the validation images -> its own calibration (Eq. 11 stats, threshold)
        -> knn "graph": the same network with kNN + fusion + smoothing appended, at that precision
           (knn search "exact": one FP32 GEMM; "int8": an INT8 GEMM and an exact re-rank, onnxruntime only)
      coreset.faiss + coreset.npy (knn "faiss"), TensorRT engines (where TensorRT is importable)
      the golden set (`runtime.selftest`) and each written graph's error against FP32 on it
      -> manifest.json (runtime.manifest writes it, last, with the SHA-256 of every file)

Written into a temporary folder beside `out` and renamed into place at the end (`fileio.atomic_directory`),
so a killed export leaves the previous bundle untouched. Each precision gets its own calibration, and its
cost against FP32 on the validation images is recorded; INT8 is refused when its verdicts, score ranking
(Spearman: its own calibration can hide a shift, not a reordering) or score drift are past the options'
limits (docs/DEPLOY.md "Precisions").

Example:
    >>> summary = export_bundle(Path("runs/tray"), Path("bundle"), ExportOptions(precisions=("fp32", "int8")))
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from npgmf_edge.calibration import Calibration, calibrate
from npgmf_edge.data import read_image
from npgmf_edge.errors import BundleError, ConfigError
from npgmf_edge.export import precision as precision_ops
from npgmf_edge.export.graph_heads import (
    DEFAULT_CANDIDATES,
    GRAPH_OUTPUT_NAMES,
    KNN_SEARCHES,
    GraphInspectionNet,
    HeadSearch,
    KnnHead,
)
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.export.verify import compare_outputs, score_drift
from npgmf_edge.fileio import atomic_directory, sha256_file
from npgmf_edge.inspection import concat_batches
from npgmf_edge.knn import BruteForceNN, FaissNN
from npgmf_edge.models.inspection_net import INPUT_NAME, OUTPUT_NAMES
from npgmf_edge.postprocess import gaussian_sigma_for, structural_maps
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.progress import Log
from npgmf_edge.rundir import TrainedRun, load_coreset, load_run, read_provenance
from npgmf_edge.runtime import selftest
from npgmf_edge.runtime.backends.base import GraphSpec
from npgmf_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, session_from_onnx
from npgmf_edge.runtime.inspector import Inspector
from npgmf_edge.runtime.manifest import (
    CORESET_FAISS,
    CORESET_NPY,
    KNN_MODES,
    MANIFEST_FILE,
    PRECISIONS,
    TIMING_CACHE,
    build_manifest,
    coreset_entry,
    graph_entry,
    graph_file,
    write_manifest,
)
from npgmf_edge.runtime.signing import key_id, load_private_key, sign_manifest_bytes

DEFAULT_MAX_BATCH = 8
DEFAULT_CALIBRATION_IMAGES = 32
DEFAULT_INT8_MAX_DISAGREEMENT = 0.02
INT8_MIN_RANK_CORRELATION = 0.95
INT8_MAX_SCORE_DRIFT = 0.1  # mean |INT8 score - FP32 score| / mean |FP32 score|


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32",)
    knn: str = "graph"  # "graph" (kNN and fusion in the graph) | "faiss" (runtime searches coreset.faiss)
    knn_search: str = "exact"  # knn "graph": "exact" FP32 GEMM | "int8" GEMM + exact re-rank (KnnHead)
    max_batch: int = DEFAULT_MAX_BATCH
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES  # normal training images for INT8 ranges
    tensorrt: bool | None = None  # None: build engines when TensorRT is importable
    int8_max_disagreement: float = DEFAULT_INT8_MAX_DISAGREEMENT
    int8_min_rank_correlation: float = INT8_MIN_RANK_CORRELATION
    int8_max_score_drift: float = INT8_MAX_SCORE_DRIFT
    threads: int | None = None
    sign_key: Path | None = None  # an Ed25519 private key: the bundle is signed inside the staging folder

    def validate(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise ConfigError(
                f"--precision must be among {', '.join(PRECISIONS)}, got {list(self.precisions)}"
            )
        if self.knn not in KNN_MODES:
            raise ConfigError(f"--knn must be one of {', '.join(KNN_MODES)}, got {self.knn!r}")
        if self.knn_search not in KNN_SEARCHES:
            raise ConfigError(
                f"--knn-search must be one of {', '.join(KNN_SEARCHES)}, got {self.knn_search!r}"
            )
        if self.knn_search == "int8" and self.knn != "graph":
            raise ConfigError("--knn-search int8 runs inside the graph: use it with --knn graph")
        if self.knn_search == "int8" and self.tensorrt:
            raise ConfigError(
                "--knn-search int8 uses MatMulInteger, which TensorRT does not run; export with "
                "--no-tensorrt (it is for onnxruntime on the CPU) or with --knn-search exact"
            )
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images must be >= 1, got {self.calibration_images}")
        if not -1.0 <= self.int8_min_rank_correlation <= 1.0:
            raise ConfigError(
                f"the INT8 rank-correlation limit must be in [-1, 1], got {self.int8_min_rank_correlation}"
            )
        if not self.int8_max_score_drift >= 0.0:
            raise ConfigError(f"the INT8 score-drift limit must be >= 0, got {self.int8_max_score_drift}")
        if not 0.0 <= self.int8_max_disagreement <= 1.0:
            raise ConfigError(
                f"the INT8 disagreement limit must be in [0, 1], got {self.int8_max_disagreement}"
            )


def _load_pixels(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([to_model_input(read_image(p), size) for p in paths]).astype(np.float32)


def _calibration_paths(
    provenance: dict, validation: list[Path], count: int, seed: int, log: Log
) -> list[Path]:
    """A seeded sample of the run's normal training images, for INT8 activation ranges."""
    train = [Path(p) for p in provenance.get("train_images", [])]
    missing = [p for p in train if not p.is_file()]
    if not train or missing:
        reason = f"{missing[0]} is missing" if missing else "the run does not list them"
        log(f"training images unavailable ({reason}); INT8 ranges come from the validation images")
        train = list(validation)
    order = np.random.default_rng(seed).permutation(len(train))[:count]
    return [train[i] for i in sorted(order)]


def _run_graph(path: Path, spec: GraphSpec, pixels: np.ndarray, threads: int | None) -> dict[str, np.ndarray]:
    backend = OnnxRuntimeBackend(session_from_onnx(path, spec, threads=threads), spec)
    step = spec.max_batch
    outputs = concat_batches(backend.infer(pixels[i : i + step]) for i in range(0, len(pixels), step))
    backend.close()
    return outputs


def _maps(
    outputs: dict[str, np.ndarray],
    knn: FaissNN | HeadSearch,
    size: int,
    calibration: Calibration | None = None,
) -> dict[str, np.ndarray]:
    """A plain graph's outputs through the post stage: branch maps, and with `calibration` the fused map
    and image score (what an `Inspector` on the bundle computes)."""
    maps = {
        "logical": outputs["logical_map"][:, 0],
        "structural": structural_maps(outputs["patch_features"], knn, size),
    }
    if calibration is not None:
        maps["fused"], maps["score"] = calibration.post(maps["structural"], maps["logical"])
    return maps


def _quality(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    ref_cal: Calibration,
    cand_cal: Calibration,
) -> dict[str, float]:
    """What a precision costs against FP32 on the same images, each with its own calibration: the
    manifest's `quality` entry (`verify.compare_outputs` on the branch maps and scores)."""
    ref = {**reference, "score": ref_cal.post(reference["structural"], reference["logical"])[1]}
    cand = {**candidate, "score": cand_cal.post(candidate["structural"], candidate["logical"])[1]}
    return compare_outputs(ref, cand, ref_cal.threshold, cand_cal.threshold, manifest=True)


class _Exporter:
    """One export: the state shared by its steps (a class only so the steps stay short)."""

    def __init__(self, run: TrainedRun, options: ExportOptions, work: Path, staging: Path, log: Log) -> None:
        self.run, self.options, self.work, self.staging, self.log = run, options, work, staging, log
        self.size = run.cfg.image_size
        self.coreset = load_coreset(run.run_dir)
        self.knn = FaissNN(on_gpu=False, num_threads=options.threads).fit(self.coreset)
        with torch.no_grad():
            _, features = run.net(torch.zeros(1, 3, self.size, self.size))
        self.grid = (int(features.shape[-2]), int(features.shape[-1]))
        # Calibration sees the distances the bundle will compute: FAISS's exact ones, or the int8 head's.
        self.search = self.knn
        if options.knn_search == "int8":
            self.search = HeadSearch(KnnHead(self.coreset, self.grid, "int8"))
        self.sigma = gaussian_sigma_for(self.size, run.cfg.fusion.gaussian_sigma)

    def spec(self, precision: str, knn: str) -> GraphSpec:
        return GraphSpec("", precision, knn, INPUT_NAME, (3, self.size, self.size), self.options.max_batch)

    def export_fp32(self, module: torch.nn.Module, names: tuple[str, ...], stem: str) -> Path:
        raw = export_onnx(
            module, torch.zeros(1, 3, self.size, self.size), self.work / f"{stem}.raw.onnx", INPUT_NAME, names
        )
        return precision_ops.simplify(raw, self.work / f"{stem}.fp32.onnx")

    def to_precision(
        self, fp32_graph: Path, precision: str, calibration_pixels: np.ndarray, dst: Path
    ) -> Path:
        if precision == "fp32":
            return fp32_graph if dst == fp32_graph else Path(shutil.copyfile(fp32_graph, dst))
        if precision == "fp16":
            return precision_ops.convert_fp16(fp32_graph, dst)
        batches = [
            calibration_pixels[i : i + self.options.max_batch]
            for i in range(0, len(calibration_pixels), self.options.max_batch)
        ]
        return precision_ops.quantize_int8(fp32_graph, dst, batches, input_name=INPUT_NAME)

    def calibrate(self, maps: dict[str, np.ndarray]) -> Calibration:
        """This precision's statistics and threshold from its own maps, with the run's chosen fusion."""
        return calibrate(
            maps["structural"], maps["logical"], self.run.cfg.fusion, self.sigma, self.run.calibration
        )


@dataclass
class ExportSummary:
    """What `export_bundle` wrote: the bundle, its graphs and files, each low precision's cost against FP32
    (the manifest's `quality`), its TensorRT engines, who signed it and how long it took."""

    bundle: str
    precisions: list[str]
    knn: str
    knn_search: str | None
    files: dict[str, str]
    quality: dict[str, dict[str, float]]
    engines: dict[str, Any]
    tensorrt: str
    signed_by: str | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def export_bundle(
    run_dir: Path, out: Path, options: ExportOptions | None = None, log: Log | None = None
) -> ExportSummary:
    """Write the bundle of `run_dir` to `out` (replacing a previous one only when complete)."""
    options = options or ExportOptions()
    options.validate()
    log = log or (lambda message: None)
    started = time.perf_counter()
    run = load_run(Path(run_dir))
    if run.calibration is None or run.scorer is None or run.net.logical is None:
        raise BundleError(
            f"{run_dir} is not a complete, calibrated run (both branches and calibration.json are needed); "
            "train it with `npgmf-edge train --branch all`"
        )
    build_engines = _engines_wanted(options.tensorrt)
    signing_key = load_private_key(options.sign_key) if options.sign_key else None  # a bad key fails now
    out = Path(out)
    manifest: dict[str, Any] = {}  # filled by `fill`, inside the staging folder

    def fill(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="npgmf-export-") as work:
            exporter = _Exporter(run, options, Path(work), staging, log)
            manifest.update(_write_bundle(exporter, build_engines, out))
        if signing_key is not None:  # before the rename: the bundle appears signed, or not at all
            sign_manifest_bytes(staging, (staging / MANIFEST_FILE).read_bytes(), signing_key)

    atomic_directory(out, fill)
    return ExportSummary(
        bundle=str(out),
        precisions=list(options.precisions),
        knn=options.knn,
        knn_search=options.knn_search if options.knn == "graph" else None,
        files=manifest["files"],
        quality=manifest["quality"],
        engines=manifest["engines"],
        tensorrt=manifest["tensorrt"],
        signed_by=key_id(signing_key.public_key()) if signing_key else None,
        seconds=round(time.perf_counter() - started, 2),
    )


def _engines_wanted(option: bool | None) -> bool:
    from npgmf_edge.runtime.backends.tensorrt import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if option and reason is not None:
        raise BundleError(f"--tensorrt: cannot build engines here ({reason}); export with --no-tensorrt")
    return reason is None if option is None else option


def _write_bundle(ex: _Exporter, build_engines: bool, out: Path) -> dict[str, Any]:
    run, options, log = ex.run, ex.options, ex.log
    provenance = read_provenance(run.run_dir)
    validation = [Path(p) for p in provenance["validation_images"]]
    if not validation:
        raise BundleError(f"{run.run_dir}: no validation images recorded in dataset.json; retrain the run")
    log(f"reading {len(validation)} validation images")
    val_pixels = _load_pixels(validation, ex.size)
    calib_paths = _calibration_paths(
        provenance, validation, options.calibration_images, run.cfg.train.seed, log
    )
    calib_pixels = _load_pixels(calib_paths, ex.size) if "int8" in options.precisions else val_pixels[:0]

    log("exporting the inspection network (FP32)")
    base_fp32 = ex.export_fp32(run.net, OUTPUT_NAMES, "inspection")
    graphs, calibrations, quality = {}, {}, {}
    reference: dict[str, np.ndarray] | None = None
    for precision in PRECISIONS:
        if precision not in options.precisions and not (precision == "fp32" and reference is None):
            continue
        log(f"{precision}: graph and calibration on {len(validation)} validation images")
        base = ex.to_precision(base_fp32, precision, calib_pixels, ex.work / f"inspection.{precision}.onnx")
        maps = _maps(
            _run_graph(base, ex.spec(precision, "faiss"), val_pixels, options.threads), ex.search, ex.size
        )
        calibration = ex.calibrate(maps)
        if reference is None:
            reference, reference_cal, reference_graph = maps, calibration, base
        if precision not in options.precisions:
            continue
        if precision != "fp32":
            quality[precision] = _quality(reference, maps, reference_cal, calibration)
            _check_int8(precision, quality[precision], options)
        target = ex.staging / graph_file(precision)
        if options.knn == "graph":
            module = GraphInspectionNet(
                run.net, ex.coreset, calibration, ex.size, ex.grid, options.knn_search
            )
            full_fp32 = ex.export_fp32(module, GRAPH_OUTPUT_NAMES, f"graph.{precision}")
            ex.to_precision(full_fp32, precision, calib_pixels, target)
        else:
            shutil.copyfile(base, target)
        if options.knn_search == "int8" and precision != "int8":  # quantize_int8 checked the int8 graph
            precision_ops.check_no_saturation(onnx.load(str(target)), target)
        outputs = _run_graph(target, ex.spec(precision, options.knn), val_pixels[:1], options.threads)
        graphs[precision] = graph_entry(target, ex.spec(precision, options.knn), outputs)
        calibrations[precision] = calibration.to_dict()

    coreset = coreset_entry(
        ex.coreset,
        ex.grid,
        run.cfg.structural.aggregation,
        options.knn,
        options.knn_search,
        DEFAULT_CANDIDATES,
    )
    if options.knn == "faiss":
        ex.knn.save(ex.staging / CORESET_FAISS)
        BruteForceNN().fit(ex.coreset).save(ex.staging / CORESET_NPY)
    engines, tensorrt_note = _build_engines(ex, graphs, build_engines, out)
    manifest = build_manifest(
        category=provenance.get("category", ""),
        preset=run.cfg.preset,
        input_name=INPUT_NAME,
        image_size=ex.size,
        max_batch=options.max_batch,
        knn=options.knn,
        graphs=graphs,
        coreset=coreset,
        calibration=calibrations,
        quality=quality,
        engines=engines,
        tensorrt=tensorrt_note,
        source_run=run.run_dir,
    )
    write_manifest(ex.staging, manifest)
    reference_scores = reference_cal.post(reference["structural"], reference["logical"])[1]
    chosen = selftest.choose_golden(reference_scores, reference_cal.threshold)
    pixels = np.clip(np.rint(val_pixels[chosen]), 0, 255).astype(np.uint8)
    golden = _run_graph(reference_graph, ex.spec("fp32", "faiss"), pixels.astype(np.float32), options.threads)
    maps = _maps(golden, ex.search, ex.size, reference_cal)
    golden_reference = (maps["score"], selftest.map_digest(maps["fused"]), reference_cal.threshold)
    thresholds = {p: calibrations[p]["threshold"] for p in calibrations}
    manifest["selftest"] = _golden_set(ex, pixels, golden_reference, thresholds, manifest["quality"])
    return write_manifest(ex.staging, manifest)


def _golden_set(
    ex: _Exporter,
    pixels: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray, float],
    thresholds: dict[str, float],
    quality: dict[str, Any],
) -> dict[str, Any]:
    """The self-test of `runtime.selftest`: the golden images, the FP32 run's answers for them
    (`reference`: scores, map digests, threshold), and what each written graph answers here through the
    station's own code path (`Inspector` on the staged bundle), from which the budgets follow. INT8 is
    refused when the written graph's scores drift from FP32's by more than INT8_MAX_SCORE_DRIFT on them."""
    scores, digests = {}, {}
    for precision in ex.options.precisions:
        inspector = Inspector.open(
            ex.staging,
            backend="onnxruntime",
            precision=precision,
            threads=ex.options.threads,
            self_test=False,
            require_selftest=False,  # this is what writes it
        )
        with inspector:
            scores[precision], digests[precision] = selftest.golden_outputs(
                inspector.run, pixels, inspector.manifest.max_batch
            )
    for precision, values in scores.items():
        if precision in quality:
            quality[precision]["selftest_score_drift"] = score_drift(reference[0], values)
            _check_int8(precision, quality[precision], ex.options)
    selftest.write_golden(ex.staging, pixels, reference[1])
    entry = selftest.expectations(scores, digests, thresholds, reference)
    ex.log(
        f"self-test: {len(pixels)} golden images; FP32 error budgets "
        + ", ".join(f"{p} {v['budget']:.3g}" for p, v in entry["precisions"].items())
    )
    return entry


class Int8RefusedError(BundleError):
    """The INT8 graph strays too far from FP32; the message gives the numbers."""


def _check_int8(precision: str, report: dict[str, Any], options: ExportOptions) -> None:
    """Int8RefusedError with every number and its limit when an INT8 graph fails one of them."""
    if precision != "int8":
        return
    disagreement = 1.0 - report["verdict_agreement"]
    drifts = [report["score_drift"], report.get("selftest_score_drift", 0.0)]
    on_golden = f" and {drifts[1]:.3f} on the self-test images" if "selftest_score_drift" in report else ""
    failed = (
        disagreement > options.int8_max_disagreement
        or not report["score_rank_correlation"] >= options.int8_min_rank_correlation  # NaN fails too
        or not max(drifts) <= options.int8_max_score_drift
    )
    if failed:
        raise Int8RefusedError(
            f"INT8 strays from FP32 on the {report['images']} validation images: verdicts disagree on "
            f"{disagreement:.1%} (limit {options.int8_max_disagreement:.1%}), score rank correlation "
            f"{report['score_rank_correlation']:.3f} (at least {options.int8_min_rank_correlation}), "
            f"score drift {report['score_drift']:.3f}{on_golden} (at most {options.int8_max_score_drift}); "
            "not writing an INT8 graph. Export fp32/fp16 instead, or calibrate on more images "
            "(--calibration-images)"
        )


def _build_engines(ex: _Exporter, graphs: dict, build: bool, out: Path) -> tuple[dict, str]:
    """TensorRT engines per precision, reusing the previous bundle's timing cache."""
    from npgmf_edge.runtime.backends import tensorrt as trt_backend

    if not build:
        return {}, trt_backend.tensorrt_unavailable_reason() or "not requested (--no-tensorrt)"
    if ex.options.knn_search == "int8":
        return {}, "not built: TensorRT does not run the int8 kNN search (MatMulInteger)"
    cache = ex.staging / TIMING_CACHE
    if (out / TIMING_CACHE).is_file():
        shutil.copyfile(out / TIMING_CACHE, cache)
    facts = trt_backend.device_facts()
    engines = {}
    for precision, entry in graphs.items():
        ex.log(f"{precision}: building a TensorRT engine on {facts['gpu_name']}")
        onnx_sha = sha256_file(ex.staging / entry["file"])  # the manifest hashes every file again, last
        name = trt_backend.engine_file_name(precision, onnx_sha, facts)
        engines[precision] = trt_backend.build_engine(
            ex.staging / entry["file"],
            ex.staging / name,
            input_name=entry["input"]["name"],
            input_shape=tuple(entry["input"]["shape"]),
            max_batch=ex.options.max_batch,
            precision=precision,
            onnx_sha256=onnx_sha,
            timing_cache_path=cache,
        )
    return engines, "built"
