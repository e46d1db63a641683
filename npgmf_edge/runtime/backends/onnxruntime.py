"""onnxruntime backend: the CPU provider here, CUDA / TensorRT execution providers with onnxruntime-gpu.

A loader (`session_from_onnx`) makes and checks the session; the runner (`OnnxRuntimeBackend`) takes it
ready and runs it, as Polygraphy's `SessionFromOnnx` and `OnnxrtRunner` do.

`onnxruntime` and `onnxruntime-gpu` install the same module; which providers exist depends on which
package is installed, so the choice is checked against `get_available_providers()` and an unavailable
one is an error that lists the available ones (never a silent fall-back to the CPU). On a GPU the outputs
are bound with IOBinding (not verified here: no onnxruntime-gpu on the development machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npgmf_edge.runtime.backends.base import Backend, BackendError, GraphSpec
from npgmf_edge.runtime.manifest import Manifest

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session_from_onnx(
    model_path: Path, spec: GraphSpec, device: str = "cpu", threads: int | None = None
) -> InferenceSession:
    """The loader: an `InferenceSession` for `model_path` on `device`'s providers, checked against `spec`
    (its input and outputs); `threads` sets intra-op threads (None: onnxruntime's default)."""
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise BackendError(f"unknown device {device!r} for onnxruntime; choose one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[device]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise BackendError(
            f"onnxruntime here has no {wanted[0]} (available: {', '.join(available)}); install "
            "onnxruntime-gpu in place of onnxruntime for CUDA, or use --device cpu"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: keep onnxruntime's warnings off the station's stderr
    # No busy-waiting after a call: the FAISS search and the next image's decoding need those cores
    # (measured on 2 cores: the kNN stage took 4x longer while onnxruntime's threads spun).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=wanted)
    if session.get_providers()[0] != wanted[0]:  # onnxruntime falls back to the CPU with a warning
        raise BackendError(
            f"onnxruntime lists {wanted[0]} but could not load it for {model_path} (it would have run on "
            f"{session.get_providers()[0]}); install the CUDA and cuDNN libraries that "
            f"onnxruntime-gpu {ort.__version__} needs, or use --device cpu"
        )
    outputs = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    if inputs != [spec.input_name] or set(outputs) != set(spec.outputs or outputs):
        raise BackendError(  # a manifest that does not describe this graph
            f"{model_path} takes {inputs} and gives {outputs}, the manifest says "
            f"{spec.input_name!r} and {sorted(spec.outputs)}"
        )
    return session


def open_bundle_graph(manifest: Manifest, precision: str, device: str, threads: int | None) -> Backend:
    """The registry's entry: the bundle's `precision` graph in a session, in a runner."""
    spec = manifest.graphs[precision]
    return OnnxRuntimeBackend(session_from_onnx(manifest.root / spec.file, spec, device, threads), spec)


class OnnxRuntimeBackend(Backend):
    """The runner: takes a ready `InferenceSession` (from `session_from_onnx`) and runs it."""

    name = "onnxruntime"

    def __init__(self, session: InferenceSession, spec: GraphSpec) -> None:
        import onnxruntime as ort

        super().__init__(spec)
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.provider = session.get_providers()[0]
        self.version = ort.__version__

    def describe(self) -> str:
        return f"onnxruntime {self.version} ({self.provider})"

    def _infer_impl(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self.provider == "CPUExecutionProvider":  # the CPU arena already reuses its buffers between calls
            outputs = self.session.run(self.output_names, {self.spec.input_name: pixels})
            return dict(zip(self.output_names, outputs, strict=True))
        # On a GPU: outputs stay on the device until the one copy back after the run (IOBinding).
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.spec.input_name, pixels)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def _close(self) -> None:
        self.session = None
