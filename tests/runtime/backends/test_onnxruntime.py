"""The onnxruntime backend checks its input against the graph's contract before running it."""

import numpy as np
import pytest

from npgmf_edge.runtime.backends.base import BackendError
from npgmf_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, session_from_onnx
from npgmf_edge.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def backend(faiss_bundle):
    spec = read_manifest(faiss_bundle).graphs["fp32"]
    with OnnxRuntimeBackend(session_from_onnx(faiss_bundle / spec.file, spec, threads=1), spec) as runner:
        yield runner


def test_outputs_have_the_manifest_shapes_and_the_call_is_timed(backend) -> None:
    out = backend.infer(np.zeros((2, 3, 128, 128), np.float32))
    assert {k: v.shape for k, v in out.items()} == {
        "logical_map": (2, 1, 128, 128),
        "patch_features": (2, 128, 16, 16),
    }
    assert backend.last_seconds > 0


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((1, 3, 128, 128), np.uint8), r"input must be float32 \(B, 3, 128, 128\), got uint8"),
        (np.zeros((1, 3, 64, 64), np.float32), r"got float32 \(1, 3, 64, 64\)"),
        (np.zeros((9, 3, 128, 128), np.float32), r"batch 9 outside 1..8 .* --max-batch"),
    ],
)
def test_a_wrong_input_is_refused_with_the_contract(backend, pixels, message) -> None:
    with pytest.raises(BackendError, match=message):
        backend.infer(pixels)


def test_a_provider_onnxruntime_lacks_is_named_with_the_available_ones(faiss_bundle) -> None:
    spec = read_manifest(faiss_bundle).graphs["fp32"]
    with pytest.raises(BackendError, match=r"no CUDAExecutionProvider \(available: .*CPUExecutionProvider"):
        session_from_onnx(faiss_bundle / spec.file, spec, device="cuda")
