"""The interface every graph runner implements (the Polygraphy runner shape).

Loaders make what a runner runs (an onnxruntime session, a TensorRT engine); a runner takes it ready.
`Backend.infer` checks the input against the graph's contract (the manifest's `GraphSpec`) and times the
call; `close` releases once. A subclass fills in `_infer_impl` and `_close` only.

Example:
    >>> backend = OnnxRuntimeBackend(session_from_onnx(bundle / spec.file, spec, threads=2), spec)
    >>> outputs = backend.infer(pixels)           # {"logical_map": (B,1,S,S), "patch_features": ...}
    >>> backend.last_seconds                      # wall time of that call
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np

from npgmf_edge.inspection import Closing


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a bundle as the manifest describes it (shapes exclude the dynamic batch axis)."""

    file: str
    precision: str  # "fp32" | "fp16" | "int8"
    knn: str  # "faiss" (graph -> logical map + patch features) | "graph" (graph -> fused map + score)
    input_name: str
    input_shape: tuple[int, int, int]  # (3, S, S), float32 raw RGB in [0, 255]
    max_batch: int
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> shape without batch


class BackendError(RuntimeError):
    """A backend cannot run a graph (bad input, missing library, device failure)."""


class Backend(Closing, abc.ABC):
    """Runs one graph. Public `infer` validates and times; subclasses implement `_infer_impl`."""

    name: str = "base"

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.last_seconds = 0.0
        self._closed = False

    def describe(self) -> str:
        """What computes this backend's numbers (library version, device), for self-test reports."""
        return self.name

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 pixels -> {output name: (B, ...) float32 array}."""
        if self._closed:
            raise BackendError(f"{self.name}: the backend is closed")
        expected = self.spec.input_shape
        if pixels.dtype != np.float32 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise BackendError(
                f"{self.name}: input must be float32 (B, {', '.join(map(str, expected))}), "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        if not 1 <= pixels.shape[0] <= self.spec.max_batch:
            raise BackendError(
                f"{self.name}: batch {pixels.shape[0]} outside 1..{self.spec.max_batch} (the bundle's "
                "max batch); split the batch or re-export with a larger --max-batch"
            )
        start = time.perf_counter()
        outputs = self._infer_impl(np.ascontiguousarray(pixels))
        self.last_seconds = time.perf_counter() - start
        return outputs

    @abc.abstractmethod
    def _infer_impl(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a checked, contiguous batch."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the session, engine or device memory this runner holds; `close` calls it once."""

    def close(self) -> None:
        """Release what the runner holds (idempotent); later calls to `infer` fail."""
        if not self._closed:
            self._closed = True
            self._close()
