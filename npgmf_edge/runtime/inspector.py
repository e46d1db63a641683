"""The station-side inspector: a bundle in, score / verdict / anomaly map out, without torch.

    Inspector.open(bundle) -> read_manifest (schema, SHA-256 of every file, coreset vs graph)
      images -> decode + resize (preprocess.to_model_input) -> one graph call per batch
        knn "faiss": patch features -> one FAISS search for all patches of the batch -> patch distances
                     -> bilinear resize (one OpenCV call for the batch) -> Eq. 11 fusion + smoothing
        knn "graph": the graph itself returns the fused map and the image score
      -> Inspection(score, threshold, map at the image's own resolution)

Needs numpy, OpenCV, onnxruntime (or TensorRT) and faiss only. One Inspector may be shared by threads:
the graph call and the search run under a lock, so results equal sequential use.

Example:
    >>> inspector = Inspector.open(Path("bundle"), precision="fp32", threads=2)
    >>> [i.verdict for i in inspector.inspect([Path("a.png"), Path("b.png")])]
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from npgmf_edge.calibration import Calibration
from npgmf_edge.data import read_image
from npgmf_edge.errors import BundleError
from npgmf_edge.inspection import Inspection
from npgmf_edge.knn import FaissNN, NearestNeighbourScorer
from npgmf_edge.preprocess import map_to_image_size, to_model_input
from npgmf_edge.runtime.backends.base import Backend
from npgmf_edge.runtime.manifest import CORESET_FAISS, TIMING_CACHE, Manifest, read_manifest

log = logging.getLogger(__name__)

# name -> (module, class); imported on first use so a missing TensorRT costs nothing.
BACKENDS = {
    "onnxruntime": ("npgmf_edge.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("npgmf_edge.runtime.backends.tensorrt", "TensorRTBackend"),
}
ImageInput = Path | str | np.ndarray


def _backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def _open_backend(
    manifest: Manifest, precision: str, backend: str, device: str, threads: int | None
) -> Backend:
    spec = manifest.graphs[precision]
    if backend == "auto":
        backend = "tensorrt" if device == "cuda" and _tensorrt_reason() is None else "onnxruntime"
    if backend == "tensorrt":
        return open_tensorrt(manifest, precision)
    return _backend_class(backend)(manifest.root / spec.file, spec, device=device, threads=threads)


def _tensorrt_reason() -> str | None:
    from npgmf_edge.runtime.backends import tensorrt as trt_backend

    return trt_backend.tensorrt_unavailable_reason()


def open_tensorrt(manifest: Manifest, precision: str) -> Backend:
    """The bundle's engine for `precision` when it was built for this GPU and TensorRT version; else an
    engine rebuilt here from the bundle's ONNX (kept beside it under a name keyed by GPU, TensorRT version
    and ONNX hash, so the next start reuses it). Refused with the reason when TensorRT is missing."""
    from npgmf_edge.runtime.backends import tensorrt as trt_backend

    reason = trt_backend.tensorrt_unavailable_reason()
    if reason is not None:
        raise BundleError(f"cannot run {manifest.root} with TensorRT: {reason}; use --backend onnxruntime")
    spec = manifest.graphs[precision]
    onnx_sha = manifest.raw["files"][spec.file]
    current = {
        **trt_backend.device_facts(),
        "precision": precision,
        "onnx_sha256": onnx_sha,
        "max_batch": manifest.max_batch,
        "input_shape": list(spec.input_shape),
    }
    recorded = manifest.engines.get(precision)
    mismatch = (
        "no engine was built at export"
        if recorded is None
        else trt_backend.engine_mismatch(recorded, current)
    )
    if mismatch is None:
        note = trt_backend.engine_warning(recorded, current)
        if note:
            log.warning(note)
        return trt_backend.TensorRTBackend(manifest.root / recorded["file"], spec)
    engine = manifest.root / trt_backend.engine_file_name(precision, onnx_sha, current)
    if not engine.is_file():
        log.warning("%s; building a TensorRT engine for this station: %s", mismatch, engine)
        try:
            trt_backend.build_engine(
                manifest.root / spec.file,
                engine,
                input_name=spec.input_name,
                input_shape=spec.input_shape,
                max_batch=manifest.max_batch,
                precision=precision,
                onnx_sha256=onnx_sha,
                timing_cache_path=manifest.root / TIMING_CACHE,
            )
        except OSError as exc:
            raise BundleError(
                f"{mismatch}; rebuilding it in {manifest.root} failed ({exc}); make the bundle writable, "
                f"or rebuild with `npgmf-edge export RUN --precision {precision} --tensorrt` on this station"
            ) from exc
    return trt_backend.TensorRTBackend(engine, spec)


def structural_maps(patch_features: np.ndarray, knn: NearestNeighbourScorer, image_size: int) -> np.ndarray:
    """(B, D, h, w) patch features -> (B, S, S) structural maps: one search for every patch of the batch,
    then one bilinear resize (half-pixel centres, as torch's align_corners=False) with the batch as channels.
    """
    b, d, h, w = patch_features.shape
    queries = np.ascontiguousarray(patch_features.transpose(0, 2, 3, 1).reshape(-1, d))
    distances = knn.search(queries, k=1)[0].reshape(b, h, w)
    stacked = np.ascontiguousarray(distances.transpose(1, 2, 0))
    resized = cv2.resize(stacked, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(image_size, image_size, b).transpose(2, 0, 1)


class Inspector:
    """Runs one precision of a bundle; see the module docstring."""

    def __init__(self, manifest: Manifest, precision: str, backend: Backend, knn: FaissNN | None) -> None:
        self.manifest = manifest
        self.precision = precision
        self.backend = backend
        self.knn = knn
        self.calibration: Calibration = manifest.calibration[precision]
        self.image_size = manifest.image_size
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        bundle: Path,
        backend: str = "auto",
        device: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
    ) -> Inspector:
        """Read and check `bundle`, then open `precision` (default: the first of fp32, fp16, int8 it has)."""
        manifest = read_manifest(Path(bundle))
        precision = precision or manifest.precisions[0]
        if precision not in manifest.graphs:
            raise BundleError(
                f"{manifest.root} holds no {precision} graph (it has: {', '.join(manifest.precisions)}); "
                f"re-export with --precision {precision}"
            )
        runner = _open_backend(manifest, precision, backend, device, threads)
        knn = None
        if manifest.knn == "faiss":
            knn = FaissNN.load(manifest.root / CORESET_FAISS, on_gpu=device == "cuda", num_threads=threads)
        return cls(manifest, precision, runner, knn)

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 pixels -> fused (B, S, S), score (B,), logical and structural (B, S, S)."""
        with self._lock:
            outputs = self.backend.infer(pixels)
            if self.knn is None:
                return {
                    "fused": outputs["fused_map"][:, 0],
                    "score": outputs["image_score"],
                    "logical": outputs["logical_map"][:, 0],
                    "structural": outputs["structural_map"][:, 0],
                }
            structural = structural_maps(outputs["patch_features"], self.knn, self.image_size)
        logical = outputs["logical_map"][:, 0]
        fused = self.calibration.fuse(structural, logical)
        scores = fused.reshape(len(fused), -1).max(axis=1)
        return {"fused": fused, "score": scores, "logical": logical, "structural": structural}

    def inspect(self, images: Sequence[ImageInput] | ImageInput) -> list[Inspection]:
        """Score, verdict and original-resolution fused map for each image (paths or RGB uint8 arrays)."""
        if isinstance(images, str | Path) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        decoded = [read_image(Path(i)) if isinstance(i, str | Path) else i for i in images]
        results: list[Inspection] = []
        for start in range(0, len(decoded), self.manifest.max_batch):
            batch = decoded[start : start + self.manifest.max_batch]
            pixels = np.stack([to_model_input(image, self.image_size) for image in batch])
            out = self.run(pixels)
            for image, fused, score in zip(batch, out["fused"], out["score"], strict=True):
                height, width = image.shape[:2]
                results.append(
                    Inspection(
                        float(score), self.calibration.threshold, map_to_image_size(fused, height, width)
                    )
                )
        return results

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
