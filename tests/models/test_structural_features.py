"""Patch features: PatchCore's reference aggregation (as constant convolutions), anomalib's local mean,
shared encoder, ONNX."""

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
    LocalMeanAggregator,
    PatchFeatureAggregator,
    PatchFeatureExtractor,
    adaptive_pool_matrix,
)
from npgmf_edge.models.structural.torch_model import build_patch_extractor, patch_feature_dim


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
    assert LocalMeanAggregator([64, 128]).state_dict() == {}
    with pytest.raises(ConfigError, match="positive odd"):
        PatchFeatureAggregator([64, 128], 32, 32, patch_size=2)
    with pytest.raises(ConfigError, match="2 levels"):
        PatchFeatureAggregator([64, 128, 256], 32, 32)
    with pytest.raises(ConfigError, match="positive odd"):
        LocalMeanAggregator([64, 128], patch_size=4)
    with pytest.raises(ConfigError, match="2 levels"):
        LocalMeanAggregator([64])


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


def _local_mean_by_hand(f2: np.ndarray, f3: np.ndarray, p: int) -> np.ndarray:
    """anomalib's aggregation written out with loops in float64: the p x p window sum over the
    zero-padded map divided by p * p (`nn.AvgPool2d(p, 1, p // 2)` counts the padding), then bilinear
    upsampling of level 3 with align_corners=False (source coordinate (i + 0.5) * in / out - 0.5, clamped
    at 0, neighbours clamped at the border), then level 2's channels followed by level 3's."""

    def window_mean(f):
        b, c, h, w = f.shape
        padded = np.zeros((b, c, h + p - 1, w + p - 1))
        padded[:, :, p // 2 : p // 2 + h, p // 2 : p // 2 + w] = f
        out = np.zeros((b, c, h, w))
        for y in range(h):
            for x in range(w):
                out[:, :, y, x] = padded[:, :, y : y + p, x : x + p].sum(axis=(2, 3)) / (p * p)
        return out

    def taps(out_len, in_len):
        for i in range(out_len):
            src = max((i + 0.5) * in_len / out_len - 0.5, 0.0)
            lo = int(np.floor(src))
            hi = min(lo + 1, in_len - 1)
            yield i, lo, hi, src - lo

    m2, m3 = window_mean(f2.astype(np.float64)), window_mean(f3.astype(np.float64))
    h, w = f2.shape[-2:]
    up = np.zeros((*m3.shape[:2], h, w))
    for y, y0, y1, ly in taps(h, m3.shape[-2]):
        for x, x0, x1, lx in taps(w, m3.shape[-1]):
            up[:, :, y, x] = (1 - ly) * ((1 - lx) * m3[:, :, y0, x0] + lx * m3[:, :, y0, x1]) + ly * (
                (1 - lx) * m3[:, :, y1, x0] + lx * m3[:, :, y1, x1]
            )
    return np.concatenate([m2, up], axis=1)


@pytest.mark.parametrize(
    ("channels", "shapes", "patch_size"),
    [
        ((40, 112), ((12, 10), (6, 5)), 3),  # lite0's levels
        ((8, 12), ((9, 7), (5, 4)), 3),  # odd grid: level 3 is not exactly half
        ((6, 4), ((8, 8), (4, 4)), 5),
        ((6, 4), ((8, 8), (4, 4)), 1),  # no neighbourhood: plain upsample + concatenate
    ],
)
def test_local_mean_equals_anomalib_written_out(channels, shapes, patch_size):
    torch.manual_seed(0)
    f2 = torch.randn(2, channels[0], *shapes[0])
    f3 = torch.randn(2, channels[1], *shapes[1])
    got = LocalMeanAggregator(channels, patch_size)([f2, f3])
    by_hand = _local_mean_by_hand(f2.numpy(), f3.numpy(), patch_size)
    # anomalib 2.7 `PatchcoreModel`: `feature_pooler = torch.nn.AvgPool2d(3, 1, 1)` per layer, then
    # `generate_embedding` interpolates the later layer to the first one's size (bilinear) and concatenates.
    pooler = torch.nn.AvgPool2d(patch_size, 1, patch_size // 2)
    pooled2, pooled3 = pooler(f2), pooler(f3)
    anomalib = torch.cat([pooled2, F.interpolate(pooled3, size=pooled2.shape[-2:], mode="bilinear")], dim=1)
    assert got.shape == (2, sum(channels), *shapes[0])
    assert np.abs(got.numpy() - by_hand).max() < 1e-5
    assert torch.allclose(got, anomalib, atol=1e-6)


def test_aggregation_is_chosen_by_the_config_and_sets_the_dimension():
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.structural.aggregation = "local_mean"
    extractor = build_patch_extractor(cfg)
    assert isinstance(extractor.aggregator, LocalMeanAggregator)
    assert extractor.embed_dim == patch_feature_dim(cfg) == 40 + 112  # Lite0 levels 2 + 3, no projection
    assert extractor(torch.zeros(1, 3, 64, 64)).shape == (1, 152, 8, 8)
    cfg.structural.aggregation = "reference"
    assert isinstance(build_patch_extractor(cfg).aggregator, PatchFeatureAggregator)
    assert patch_feature_dim(cfg) == cfg.structural.embed_dim
    cfg.structural.aggregation = "mean"
    with pytest.raises(ConfigError, match=r"structural\.aggregation must be one of reference, local_mean"):
        build_patch_extractor(cfg)


def test_local_mean_exports_as_average_pool_resize_concat_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    encoder = FrozenEncoder("resnet18", out_indices=(2, 3), pretrained=False)
    extractor = PatchFeatureExtractor(encoder, LocalMeanAggregator(encoder.channels), (0, 1)).eval()
    path = export_onnx(extractor, torch.rand(1, 3, 96, 96) * 255, tmp_path / "s.onnx", "pixels", ["features"])
    ops = graph_op_types(path)
    assert {"AveragePool", "Resize", "Concat"} <= ops and ops <= TENSORRT_OPS
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(2, 3, 96, 96) * 255
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = extractor(pixels).numpy()
    assert got.shape == expected.shape == (2, 128 + 256, 12, 12)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
