"""The in-graph post stage (`--knn graph` bundles: resize, Eq. 11, smoothing, image score) against the
numpy one (`postprocess`), at both fusion levels, in torch and as ONNX run by onnxruntime."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from npgmf_edge.calibration.calibrate import Calibration
from npgmf_edge.export.graph_heads import FusionHead
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.postprocess import BranchStats, distances_to_map

SIZE, STRIDE = 32, 4


def _calibration(level: str) -> Calibration:
    return Calibration(
        structural=BranchStats(0.8, 0.3),
        logical=BranchStats(0.2, 0.05),
        weight_structural=1.0,
        weight_logical=0.5,
        gaussian_sigma=1.5,
        threshold=0.0,
        false_alarm_rate=0.01,
        n_validation_images=4,
        fusion_level=level,
        structural_image=BranchStats(1.4, 0.2),
        logical_image=BranchStats(0.35, 0.04),
    )


class _Wrapped(nn.Module):
    """One input for export: channel 0 is the logical map, channel 1 sampled every STRIDE px the patch
    distances."""

    def __init__(self, head: FusionHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(x[:, 1, ::STRIDE, ::STRIDE], x[:, :1])


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.empty((3, 2, SIZE, SIZE), np.float32)
    x[:, 0] = rng.normal(0.2, 0.05, (3, SIZE, SIZE))
    x[:, 1] = rng.normal(0.8, 0.3, (3, SIZE, SIZE))
    x[1, 0, 20:24, 5:9] += 0.4  # a logical anomaly
    x[2, 1, ::STRIDE, ::STRIDE][2, 6] += 2.0  # a structural one
    return x


@pytest.mark.parametrize("level", ["pixel", "image"])
def test_the_graph_fusion_head_equals_the_numpy_post_stage(level: str, tmp_path: Path) -> None:
    calibration = _calibration(level)
    module = _Wrapped(FusionHead(calibration, SIZE)).eval()
    x = _inputs()
    with torch.no_grad():
        fused, score, structural = (t.numpy() for t in module(torch.from_numpy(x)))
    ref_fused, ref_score = calibration.post(structural[:, 0], x[:, 0])
    ref_structural = distances_to_map(x[:, 1, ::STRIDE, ::STRIDE], (SIZE, SIZE))
    assert np.abs(structural[:, 0] - ref_structural).max() < 1e-4
    assert np.abs(fused[:, 0] - ref_fused).max() < 1e-4
    assert np.abs(score - ref_score).max() < 1e-4
    path = export_onnx(module, torch.from_numpy(x[:1]), tmp_path / "head.onnx", "x", ("fused", "score", "s"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_fused, onnx_score, onnx_structural = session.run(None, {"x": x})
    assert np.abs(onnx_structural[:, 0] - ref_structural).max() < 1e-4
    assert np.abs(onnx_fused[:, 0] - ref_fused).max() < 1e-4
    assert np.abs(onnx_score - ref_score).max() < 1e-4
    assert np.argmax(ref_score) != 0  # the anomalous images score above the plain one at either level
