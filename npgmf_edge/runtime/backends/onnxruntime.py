"""onnxruntime backend: the CPU provider here, CUDA / TensorRT execution providers with onnxruntime-gpu.

`onnxruntime` and `onnxruntime-gpu` install the same module; which providers exist depends on which
package is installed, so the choice is checked against `get_available_providers()` and an unavailable
one is an error that lists the available ones (never a silent fall-back to the CPU). On a GPU the outputs
are bound with IOBinding (not verified here: no onnxruntime-gpu on the development machines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npgmf_edge.runtime.backends.base import Backend, BackendError, GraphSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    """One `InferenceSession` per graph; `threads` sets intra-op threads (None: onnxruntime's default)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, spec: GraphSpec, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        super().__init__(spec)
        if device not in PROVIDERS:
            raise BackendError(
                f"unknown device {device!r} for onnxruntime; choose one of {', '.join(PROVIDERS)}"
            )
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
        self.session = ort.InferenceSession(str(model_path), options, providers=wanted)
        if self.session.get_providers()[0] != wanted[0]:  # onnxruntime falls back to the CPU with a warning
            raise BackendError(
                f"onnxruntime lists {wanted[0]} but could not load it for {model_path} (it would have run on "
                f"{self.session.get_providers()[0]}); install the CUDA and cuDNN libraries that "
                f"onnxruntime-gpu {ort.__version__} needs, or use --device cpu"
            )
        self.output_names = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [spec.input_name] or set(self.output_names) != set(spec.outputs or self.output_names):
            raise BackendError(  # a manifest that does not describe this graph
                f"{model_path} takes {inputs} and gives {self.output_names}, the manifest says "
                f"{spec.input_name!r} and {sorted(spec.outputs)}"
            )
        self.device = device
        self.version = ort.__version__

    def describe(self) -> str:
        return f"onnxruntime {self.version} ({self.session.get_providers()[0]})"

    def _infer_impl(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self.device == "cpu":  # the CPU provider's arena already reuses its buffers between calls
            outputs = self.session.run(self.output_names, {self.spec.input_name: pixels})
            return dict(zip(self.output_names, outputs, strict=True))
        # On a GPU: outputs stay on the device until the one copy back after the run (IOBinding).
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.spec.input_name, pixels)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def close(self) -> None:
        self.session = None
