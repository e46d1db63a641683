"""Patch features: PatchCore's aggregation computed in a cheaper order, shared encoder, ONNX export."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from npgmf_edge.config import get_preset
from npgmf_edge.errors import ConfigError
from npgmf_edge.export.onnx_graph import ONNX_OPSET, export_onnx, graph_op_types
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.structural.features import (
    PatchFeatureAggregator,
    PatchFeatureExtractor,
    adaptive_pool_matrix,
)
from npgmf_edge.models.structural.torch_model import build_patch_extractor


def _patchcore_order(f2, f3, pretrain_dim, embed_dim, patch_size=3):
    """The textbook order: local average, upsample level 3, pool channels per level, concat, pool again."""
    pad = patch_size // 2
    levels = [F.avg_pool2d(f, patch_size, 1, pad, count_include_pad=False) for f in (f2, f3)]
    levels[1] = F.interpolate(levels[1], size=f2.shape[-2:], mode="bilinear", align_corners=False)
    b, _, h, w = f2.shape
    pooled = []
    for f in levels:
        rows = f.permute(0, 2, 3, 1).reshape(b * h * w, 1, -1)
        pooled.append(F.adaptive_avg_pool1d(rows, pretrain_dim).squeeze(1))
    stacked = torch.cat(pooled, dim=1)[:, None]
    out = F.adaptive_avg_pool1d(stacked, embed_dim).squeeze(1)
    return out.reshape(b, h, w, embed_dim).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("in_dim", "out_dim"), [(7, 3), (3, 7), (128, 128), (1536, 1024), (10, 4)])
def test_pool_matrix_equals_adaptive_avg_pool1d(in_dim, out_dim):
    v = torch.randn(5, 1, in_dim, dtype=torch.float64)
    expected = F.adaptive_avg_pool1d(v, out_dim).squeeze(1)
    assert torch.allclose(v.squeeze(1) @ adaptive_pool_matrix(in_dim, out_dim).T, expected, atol=1e-12)


@pytest.mark.parametrize(("pretrain_dim", "embed_dim"), [(128, 128), (96, 64), (300, 200)])
def test_aggregator_equals_patchcore_order_of_operations(pretrain_dim, embed_dim):
    torch.manual_seed(0)
    f2, f3 = torch.randn(2, 128, 12, 10), torch.randn(2, 256, 6, 5)
    aggregator = PatchFeatureAggregator([128, 256], pretrain_dim, embed_dim)
    got = aggregator([f2, f3])
    assert got.shape == (2, embed_dim, 12, 10)
    assert torch.allclose(got, _patchcore_order(f2, f3, pretrain_dim, embed_dim), atol=1e-5)


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
    assert {"Conv", "AveragePool", "Resize"} <= graph_op_types(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(3, 3, 128, 128) * 255  # another batch size: the batch axis is dynamic
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = extractor(pixels).numpy()
    assert got.shape == expected.shape == (3, 64, 16, 16)
    assert np.abs(got - expected).max() < 1e-4
