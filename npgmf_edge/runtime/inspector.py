"""The station-side inspector: a bundle in, score / verdict / anomaly map out, without torch.

    Inspector.open(bundle) -> read_manifest -> the precision's self-test (refused, or `fallback` answers)
      images -> decode + resize (preprocess.to_model_input) -> one graph call per batch
        knn "faiss": patch features -> one FAISS search per batch -> `postprocess` (map, Eq. 11, smoothing)
        knn "graph": the graph itself returns the fused map and the image score
      -> Inspection(score, threshold, map at the image's own resolution)

Needs numpy, OpenCV, onnxruntime (or TensorRT) and faiss only. One Inspector may be shared by threads: the
graph call and the search run under a lock, so results equal sequential use.

Example:
    >>> inspector = Inspector.open(Path("bundle"), precision="fp32", threads=2)
    >>> [i.verdict for i in inspector.inspect([Path("a.png"), Path("b.png")])]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.calibration import Calibration
from npgmf_edge.data import DEFAULT_MAX_PIXELS, decode_inputs
from npgmf_edge.errors import BundleError
from npgmf_edge.inspection import Closing, ImageInput, Inspection
from npgmf_edge.knn import FaissNN, faiss_gpu_unavailable_reason
from npgmf_edge.postprocess import structural_maps
from npgmf_edge.preprocess import map_to_image_size, to_model_input
from npgmf_edge.runtime import platform_facts
from npgmf_edge.runtime.backends.base import Backend, BackendError
from npgmf_edge.runtime.backends.registry import open_backend
from npgmf_edge.runtime.manifest import CORESET_FAISS, Manifest, read_manifest
from npgmf_edge.runtime.selfcheck import failure_message, run_self_test
from npgmf_edge.runtime.selftest import SelfTestError, SelfTestResult

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "graph", "knn", "post")  # seconds per stage, as `bench` reports them
FAISS_HEADER_SLACK = 4096  # bytes an IndexFlatL2 file holds besides its vectors (about 50)


def _coreset_on_gpu(manifest: Manifest, device: str) -> bool:
    """Whether a `--knn faiss` bundle searches on the GPU: with a GPU device ("cuda", or onnxruntime's
    "tensorrt" provider) where FAISS can. Where it cannot (faiss-cpu, the only FAISS for Jetson), the
    search runs on the CPU with a one-line warning: the answers are the same (distances are recomputed
    exactly either way), only the search is slower, and the network itself still runs on the GPU."""
    if device not in ("cuda", "tensorrt"):
        return False
    reason = faiss_gpu_unavailable_reason()
    if reason is not None:
        log.warning(
            "%s: the coreset search runs on the CPU, not the GPU: %s; re-export with --knn graph to search "
            "inside the graph on the GPU, or install faiss-gpu-cu12 in place of faiss-cpu (x86_64)",
            manifest.root, reason,
        )  # fmt: skip
    return reason is None


def _load_coreset(manifest: Manifest, device: str, threads: int | None) -> FaissNN:
    """coreset.faiss, refused in one line when faiss cannot read it or it holds another count or dimension
    than the manifest says (a truncated or inflated file whose hash was recomputed). The file's size is
    checked first: faiss would otherwise allocate whatever count its header claims."""
    path, count, dim = manifest.root / CORESET_FAISS, manifest.coreset["count"], manifest.coreset["dim"]
    payload, size = count * dim * 4, path.stat().st_size
    if not payload <= size <= payload + FAISS_HEADER_SLACK:
        raise BundleError(
            f"{path} is {size} bytes, but {count} vectors of dimension {dim} take {payload} (+ a header); "
            "re-export the bundle"
        )
    try:
        on_gpu = _coreset_on_gpu(manifest, device)
        knn = FaissNN.load(path, on_gpu=on_gpu, num_threads=threads)
    except ImportError as exc:
        raise BundleError(
            f"{manifest.root} searches its coreset with FAISS (exported with --knn faiss), and faiss cannot "
            f"be imported here ({exc}); pip install faiss-cpu, or re-export with --knn graph (needs no FAISS)"
        ) from exc
    except (RuntimeError, MemoryError) as exc:  # faiss reports a bad file as RuntimeError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
            f"{path} is not a readable FAISS index ({first_line}); re-export the bundle"
        ) from exc
    if (len(knn.bank), knn.dim) != (count, dim):
        raise BundleError(
            f"{path} holds {len(knn.bank)} vectors of dimension {knn.dim}, the manifest {count} of {dim}; "
            "re-export the bundle"
        )
    return knn


class Inspector(Closing):
    """Runs one precision of a bundle; see the module docstring."""

    def __init__(
        self,
        manifest: Manifest,
        precision: str,
        backend: Backend,
        knn: FaissNN | None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.manifest = manifest
        self.max_pixels = max_pixels
        self.precision = precision
        self.backend = backend
        self.knn = knn
        self.calibration: Calibration = manifest.calibration[precision]
        self.image_size = manifest.image_size
        self.self_test: SelfTestResult | None = None  # set by `open`
        self.requested_precision = precision  # differs from `precision` when a fallback answers
        self.fallback_reason: str | None = None
        self._lock = threading.Lock()
        # Decodes the next batch while the graph runs: one thread for the Inspector's life (started on first
        # use, stopped by `close`), not one per call; see `inspect`.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npgmf-decode")
        self.last_stages: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @classmethod
    def open(
        cls,
        bundle: Path,
        backend: str = "auto",
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        *,
        self_test: bool = True,
        fallback: str | None = None,
        trust: Path | None = None,
        require_selftest: bool = True,
    ) -> Inspector:
        """Read and check `bundle`, open `precision` (default: the first it has of fp32, fp16, int8) and run
        its self-test: a failure raises `SelfTestError`, unless `fallback` names another precision, opened
        (and self-tested) instead with a warning (`requested_precision`, `fallback_reason` say so). `trust`:
        public keys the bundle must be signed by (`runtime.signing`). `require_selftest=False` is for the
        export's staging folder only."""
        manifest = read_manifest(Path(bundle), trust=trust, require_selftest=require_selftest)
        precision = precision or manifest.precisions[0]
        for name in (precision, fallback):
            if name is not None and name not in manifest.graphs:
                raise BundleError(
                    f"{manifest.root} holds no {name} graph (it has: {', '.join(manifest.precisions)}); "
                    f"re-export with --precision {name}"
                )
        inspector = cls._open_precision(manifest, precision, backend, device, threads, max_pixels)
        if not self_test:
            return inspector
        problem = inspector._run_self_test()
        if problem is None:
            return inspector
        inspector.close()
        if fallback is None or fallback == precision:
            raise SelfTestError(problem)
        log.warning("%s; answering in %s (fallback)", problem, fallback)
        answering = cls._open_precision(manifest, fallback, backend, device, threads, max_pixels)
        fallback_problem = answering._run_self_test()
        if fallback_problem is not None:
            answering.close()
            raise SelfTestError(fallback_problem)
        answering.requested_precision, answering.fallback_reason = precision, problem
        return answering

    def _run_self_test(self) -> str | None:
        """Run the bundle's golden set here (result in `self_test`); the failure message, or None."""
        self.self_test = self.run_self_test()
        if self.self_test is None:
            log.warning(
                "%s has no self-test images (exported before them); re-export to get one", self.manifest.root
            )
            return None
        if not self.self_test.passed:
            return failure_message(self.self_test, self.manifest)
        log.info(
            "%s %s self-test passed in %.3f s (score error against FP32 %.2g <= %.2g)",
            self.manifest.root, self.precision, self.self_test.seconds, self.self_test.score_error,
            self.self_test.budget,
        )  # fmt: skip
        return None

    @classmethod
    def _open_precision(
        cls,
        manifest: Manifest,
        precision: str,
        backend: str,
        device: str,
        threads: int | None,
        max_pixels: int | None,
    ) -> Inspector:
        try:
            runner = open_backend(manifest, precision, backend, device, threads)
        except BackendError as exc:
            raise BundleError(f"{manifest.root}: cannot open its {precision} graph ({exc})") from exc
        knn = _load_coreset(manifest, device, threads) if manifest.knn == "faiss" else None
        return cls(manifest, precision, runner, knn, max_pixels)

    def run(self, pixels: np.ndarray, stages: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 pixels -> fused (B, S, S), score (B,), logical and structural (B, S, S).

        `stages` (when given) accumulates seconds spent in the graph, the kNN search and the fusion."""
        stages = stages if stages is not None else dict.fromkeys(STAGES, 0.0)
        with self._lock:
            tick = time.perf_counter()
            outputs = self.backend.infer(pixels)
            stages["graph"] += time.perf_counter() - tick
            if self.knn is None:
                return {
                    "fused": outputs["fused_map"][:, 0],
                    "score": outputs["image_score"],
                    "logical": outputs["logical_map"][:, 0],
                    "structural": outputs["structural_map"][:, 0],
                }
            tick = time.perf_counter()
            structural = structural_maps(outputs["patch_features"], self.knn, self.image_size)
            stages["knn"] += time.perf_counter() - tick
        tick = time.perf_counter()
        logical = outputs["logical_map"][:, 0]
        fused, scores = self.calibration.post(structural, logical)
        stages["post"] += time.perf_counter() - tick
        return {"fused": fused, "score": scores, "logical": logical, "structural": structural}

    def _load(
        self, batch: Sequence[ImageInput]
    ) -> tuple[list[tuple[int, int] | str], np.ndarray | None, dict]:
        """Decode and resize one batch: ((height, width) or error message per item, pixels of the good ones).
        Only the sizes are kept, so a batch of large images is not held while the next one decodes."""
        stages = dict.fromkeys(STAGES, 0.0)
        tick = time.perf_counter()
        images = decode_inputs(batch, self.max_pixels)
        stages["decode"] = time.perf_counter() - tick
        tick = time.perf_counter()
        good = [image for image in images if not isinstance(image, str)]
        pixels = np.stack([to_model_input(image, self.image_size) for image in good]) if good else None
        stages["preprocess"] = time.perf_counter() - tick
        sizes = [image if isinstance(image, str) else image.shape[:2] for image in images]
        return sizes, pixels, stages

    def inspect(
        self, images: Sequence[ImageInput] | ImageInput, *, branch_maps: bool = False
    ) -> list[Inspection]:
        """Score, verdict and original-resolution fused map for each image (paths or RGB uint8 arrays); an
        unreadable one gets an `Inspection` with its `error`. Each next batch decodes on the Inspector's one
        decoding thread while the graph runs (docs/RELIABILITY.md); seconds per stage in `last_stages`."""
        if isinstance(images, str | Path) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        step = self.manifest.max_batch
        batches = [images[i : i + step] for i in range(0, len(images), step)]
        totals = dict.fromkeys(STAGES, 0.0)
        results: list[Inspection] = []
        ready = self._load(batches[0]) if batches else None
        for k in range(len(batches)):
            loaded, pixels, stages = ready
            pending = self._pool.submit(self._load, batches[k + 1]) if k + 1 < len(batches) else None
            for name, seconds in stages.items():
                totals[name] += seconds
            results.extend(self._inspect_loaded(loaded, pixels, totals, branch_maps))
            ready = pending.result() if pending is not None else None
        self.last_stages = totals
        return results

    def _inspect_loaded(
        self, loaded: list, pixels: np.ndarray | None, stages: dict[str, float], branch_maps: bool
    ) -> list[Inspection]:
        threshold = self.calibration.threshold
        out = self.run(pixels, stages) if pixels is not None else None
        results, row = [], 0
        tick = time.perf_counter()
        for size in loaded:
            if isinstance(size, str):
                results.append(Inspection.failed(threshold, size, precision=self.precision))
                continue
            height, width = size
            fused_map = map_to_image_size(out["fused"][row], height, width)
            maps = (
                {"logical": out["logical"][row], "structural": out["structural"][row]} if branch_maps else {}
            )
            results.append(
                Inspection(
                    float(out["score"][row]), threshold, fused_map, branch_maps=maps, precision=self.precision
                )
            )
            row += 1
        stages["post"] += time.perf_counter() - tick
        return results

    def run_self_test(self) -> SelfTestResult | None:
        """The bundle's golden set through this inspector (`runtime.selfcheck`); None for a bundle without."""
        return run_self_test(self.manifest, self.precision, self.run, self.backend.describe())

    def close(self) -> None:
        self._pool.shutdown()
        self.backend.close()


def self_test_bundle(
    bundle: Path,
    backend: str = "auto",
    device: str = "cpu",
    trust: Path | None = None,
    precisions: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """`npgmf-edge verify BUNDLE` on a station: each precision's self-test here (or those of `precisions`
    it has), with this machine's facts (with `trust`, first the bundle's signature by one of those keys)."""
    rows = []
    manifest = read_manifest(Path(bundle), trust=trust)
    for precision in (p for p in manifest.precisions if precisions is None or p in precisions):
        with Inspector.open(bundle, backend, device, precision, self_test=False, trust=trust) as inspector:
            result = inspector.run_self_test()
            rows.append(
                {"precision": precision, "backend": inspector.backend.describe(), "passed": None}
                if result is None
                else result.to_dict()
            )
            if result is not None and not result.passed:
                rows[-1]["message"] = failure_message(result, inspector.manifest)
    entry = manifest.raw.get("selftest") or {}
    return {
        "bundle": str(bundle),
        "machine": platform_facts.machine_facts(),
        "export_machine": entry.get("machine"),
        "rows": rows,
        "passed": all(row["passed"] is not False for row in rows),
    }


def format_self_test_table(report: dict[str, Any]) -> str:
    lines = [
        f"self-test of {report['bundle']} on {platform_facts.describe(report['machine'])}",
        f"exported on {platform_facts.describe(report['export_machine'] or {})}",
        "errors against the FP32 reference (mean over the golden images); spread: largest distance from the "
        "export machine's answers",
        f"{'precision':<9} {'result':<8} {'score err':>9} {'budget':>7} {'map err':>8} {'budget':>7} "
        f"{'flips':>5} {'spread':>8} {'seconds':>8}  backend",
    ]
    for row in report["rows"]:
        if row["passed"] is None:
            lines.append(
                f"{row['precision']:<9} {'no set':<8} (exported without a self-test)  {row['backend']}"
            )
            continue
        map_err, map_budget = (
            ("-", "-")
            if row["map_error"] is None
            else (f"{row['map_error']:.3g}", f"{row['map_budget']:.3g}")
        )
        flips = "-" if row["verdict_flips"] is None else f"{row['verdict_flips']}/{row['max_flips']}"
        lines.append(
            f"{row['precision']:<9} {'ok' if row['passed'] else 'FAILS':<8} {row['score_error']:9.3g} "
            f"{row['budget']:7.3g} {map_err:>8} {map_budget:>7} {flips:>5} {row['spread']:8.3g} "
            f"{row['seconds']:8.3f}  {row['backend']}"
        )
    lines.extend(row["message"] for row in report["rows"] if "message" in row)
    return "\n".join(lines)
