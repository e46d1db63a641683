"""The one way to open a bundle's graph: a backend's name -> its module, imported on first use, so a
missing TensorRT costs nothing. Each module's `open_bundle_graph` hands its loader's session or engine to
its runner. Example: `open_backend(read_manifest(bundle), "fp32", "auto", "cpu").infer(pixels)`."""

from __future__ import annotations

import importlib

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime.backends.base import Backend
from npgmf_edge.runtime.manifest import Manifest

BACKENDS = {
    "onnxruntime": "npgmf_edge.runtime.backends.onnxruntime",
    "tensorrt": "npgmf_edge.runtime.backends.tensorrt",
}


def tensorrt_unavailable_reason() -> str | None:
    """None when the native TensorRT backend can run here, else why not (one line)."""
    return importlib.import_module(BACKENDS["tensorrt"]).tensorrt_unavailable_reason()


def open_backend(
    manifest: Manifest, precision: str, backend: str = "auto", device: str = "cpu", threads: int | None = None
) -> Backend:
    """A runner for the bundle's `precision` graph. "auto" is TensorRT on a CUDA device where it can run,
    else onnxruntime."""
    if backend == "auto":
        backend = "tensorrt" if device == "cuda" and tensorrt_unavailable_reason() is None else "onnxruntime"
    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[backend])
    return module.open_bundle_graph(manifest, precision, device=device, threads=threads)
