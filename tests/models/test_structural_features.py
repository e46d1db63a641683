"""Patch features: PatchCore's reference aggregation (as constant convolutions), shared encoder, ONNX."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from npgmf_edge.config import get_preset
from npgmf_edge.errors import ConfigError
from npgmf_edge.export.onnx_graph import ONNX_OPSET, export_onnx, graph_op_types
from npgmf_edge.export.tensorrt_ops import TENSORRT_OPS
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.structural.features import (
    PatchFeatureAggregator,
    PatchFeatureExtractor,
    adaptive_pool_matrix,
)
from npgmf_edge.models.structural.torch_model import build_patch_extractor


def _reference_patchcore_embed(f2, f3, patch_size, pretrain_dim, target_dim):
    """PatchCore's reference path, transcribed step by step from amazon-science/patchcore-inspection:
    `PatchMaker.patchify` per level, the level-3 interpolation of `PatchCore._embed`, then
    `Preprocessing` (one `MeanMapper` per level, stacked) and `Aggregator`. Returns (B, D, h, w)."""
    padding = (patch_size - 1) // 2

    def patchify(x):  # -> (B, L, C, p, p) and the patch grid
        unfolded = F.unfold(x, kernel_size=patch_size, stride=1, padding=padding, dilation=1)
        grid = [int((s + 2 * padding - (patch_size - 1) - 1) / 1 + 1) for s in x.shape[-2:]]
        unfolded = unfolded.reshape(*x.shape[:2], patch_size, patch_size, -1)
        return unfolded.permute(0, 4, 1, 2, 3), grid

    (p2, grid2), (p3, grid3) = patchify(f2), patchify(f3)
    x = p3.reshape(p3.shape[0], grid3[0], grid3[1], *p3.shape[2:])
    x = x.permute(0, -3, -2, -1, 1, 2)  # (B, C, p, p, h3, w3)
    base = x.shape
    x = x.reshape(-1, *x.shape[-2:])
    x = F.interpolate(x.unsqueeze(1), size=tuple(grid2), mode="bilinear", align_corners=False).squeeze(1)
    x = x.reshape(*base[:-2], grid2[0], grid2[1]).permute(0, -2, -1, 1, 2, 3)
    p3 = x.reshape(len(x), -1, *x.shape[-3:])
    per_level = [p.reshape(-1, *p.shape[-3:]) for p in (p2, p3)]  # (B*L, C, p, p)
    mapped = [
        F.adaptive_avg_pool1d(f.reshape(len(f), 1, -1), pretrain_dim).squeeze(1) for f in per_level
    ]  # MeanMapper
    stacked = torch.stack(mapped, dim=1)  # Preprocessing
    out = F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), target_dim)  # Aggregator
    out = out.reshape(len(stacked), -1)
    return out.reshape(f2.shape[0], grid2[0], grid2[1], target_dim).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("in_dim", "out_dim"), [(7, 3), (3, 7), (128, 128), (1536, 1024), (10, 4)])
def test_pool_matrix_equals_adaptive_avg_pool1d(in_dim, out_dim):
    v = torch.randn(5, 1, in_dim, dtype=torch.float64)
    expected = F.adaptive_avg_pool1d(v, out_dim).squeeze(1)
    assert torch.allclose(v.squeeze(1) @ adaptive_pool_matrix(in_dim, out_dim).T, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("channels", "shapes", "patch_size", "pretrain_dim", "embed_dim"),
    [
        ((40, 112), ((12, 10), (6, 5)), 3, 128, 128),  # lite0's levels: pretrain_dim > C, < C*9
        ((128, 256), ((12, 10), (6, 5)), 3, 96, 64),  # pretrain_dim < C: still not a channel average
        ((8, 12), ((9, 7), (5, 4)), 3, 200, 150),  # pretrain_dim > C*9: pooling repeats entries
        ((16, 24), ((8, 8), (4, 4)), 3, 30, 7),  # uneven bins everywhere
        ((16, 24), ((8, 8), (4, 4)), 5, 64, 1),  # one output row fed by both levels
        ((16, 24), ((8, 8), (4, 4)), 1, 20, 20),  # no neighbourhood
    ],
)
def test_aggregator_equals_the_patchcore_reference(channels, shapes, patch_size, pretrain_dim, embed_dim):
    torch.manual_seed(0)
    f2 = torch.randn(2, channels[0], *shapes[0])
    f3 = torch.randn(2, channels[1], *shapes[1])
    aggregator = PatchFeatureAggregator(channels, pretrain_dim, embed_dim, patch_size)
    got = aggregator([f2, f3])
    expected = _reference_patchcore_embed(f2, f3, patch_size, pretrain_dim, embed_dim)
    assert got.shape == expected.shape == (2, embed_dim, *shapes[0])
    assert torch.allclose(got, expected, atol=1e-5)


def test_aggregator_has_no_saved_state_and_rejects_bad_sizes():
    assert PatchFeatureAggregator([64, 128], 32, 32).state_dict() == {}
    with pytest.raises(ConfigError, match="positive odd"):
        PatchFeatureAggregator([64, 128], 32, 32, patch_size=2)
    with pytest.raises(ConfigError, match="2 levels"):
        PatchFeatureAggregator([64, 128, 256], 32, 32)


def test_extractor_on_the_logical_encoder_equals_its_own_encoder_with_the_same_weights():
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.structural.share_logical_encoder = True
    shared = build_patch_extractor(cfg)
    assert shared.levels == (1, 2)  # levels 2 and 3 inside the logical encoder's (1, 2, 3)
    cfg.structural.share_logical_encoder = False
    own = build_patch_extractor(cfg)
    assert own.levels == (0, 1)
    own.encoder.load_state_dict(shared.encoder.state_dict())
    pixels = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        features = shared.encoder(pixels)  # one pass, as the logical branch makes it
        assert torch.allclose(shared.aggregate(features), own(pixels), atol=1e-6)
        assert torch.equal(shared.aggregate(features), shared(pixels))


def test_feature_grid_is_stride_8_and_dimension_is_embed_dim():
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    extractor = build_patch_extractor(cfg)
    assert extractor.stride == 8
    assert extractor.grid_size(96) == (12, 12)
    assert extractor(torch.zeros(1, 3, 96, 96)).shape[1] == cfg.structural.embed_dim


def test_onnx_export_reproduces_features_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    encoder = FrozenEncoder("resnet18", out_indices=(2, 3), pretrained=False)
    extractor = PatchFeatureExtractor(encoder, PatchFeatureAggregator(encoder.channels, 96, 64), (0, 1))
    example = torch.rand(1, 3, 128, 128) * 255
    path = export_onnx(extractor, example, tmp_path / "structural.onnx", "pixels", ["features"])
    assert ONNX_OPSET >= 17
    ops = graph_op_types(path)
    assert {"Conv", "Resize"} <= ops and ops <= TENSORRT_OPS
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(3, 3, 128, 128) * 255  # another batch size: the batch axis is dynamic
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = extractor(pixels).numpy()
    assert got.shape == expected.shape == (3, 64, 16, 16)
    assert np.abs(got - expected).max() < 1e-4
