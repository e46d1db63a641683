"""The assembled logical network: shapes for every preset, Eq. 7, ablations, construction-time checks,
and the deployable graph (ONNX, onnxruntime parity, TensorRT-friendly op set)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from npgmf_edge.config import get_preset
from npgmf_edge.errors import ConfigError
from npgmf_edge.export.onnx_graph import export_onnx, graph_op_types
from npgmf_edge.export.tensorrt_ops import TENSORRT_OPS
from npgmf_edge.models.logical import NpgmfLogicalNet, logical_anomaly_map

CLIP_DIM = 300  # any width works; 300 cannot be confused with a feature width in the graph
# Ops TensorRT 10 parses natively; the logical graph must stay inside this set.


def build(preset: str, **overrides) -> tuple[NpgmfLogicalNet, int]:
    cfg = get_preset(preset)
    for key, value in overrides.items():
        setattr(cfg.logical, key, value)
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(CLIP_DIM), dim=0)
    net = NpgmfLogicalNet(cfg.logical, cfg.image_size, emb, pretrained=False, weights=None, warn_random=False)
    return net, cfg.image_size


@pytest.mark.parametrize("preset", ["tiny", pytest.param("edge", marks=pytest.mark.slow), "paper"])
def test_every_module_has_the_expected_shapes(preset: str) -> None:
    net, size = build(preset)
    cfg = get_preset(preset).logical
    x = torch.rand(1, 3, size, size) * 255
    with torch.no_grad():
        out = net.forward_train(x)
    channels, strides = net.encoder.channels, net.encoder.strides
    expected = [(1, c, size // s, size // s) for c, s in zip(channels, strides, strict=True)]
    assert [tuple(f.shape) for f in out.encoder_features] == expected
    assert [tuple(f.shape) for f in out.decoder_features] == expected
    assert [tuple(z.shape) for z in out.latents] == [(1, cfg.codebook_dim, *e[2:]) for e in expected]
    assert [tuple(i.shape) for i in out.code_indices] == [(1, *e[2:]) for e in expected]
    assert len(out.vq_losses) == 3 and all(v.ndim == 0 for v in out.vq_losses)
    assert out.reconstruction.shape == out.target.shape == (1, 3, size, size)
    assert net.bottleneck(out.encoder_features).shape == (1, 2 * channels[-1], size // 32, size // 32)
    if preset == "paper":
        assert size == 256 and net.encoder.name == "resnet101" and channels == [256, 512, 1024]
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, 1, size, size)


def test_forward_is_eq7_over_the_training_features() -> None:
    net, size = build("tiny")
    net.eval()
    x = torch.rand(2, 3, size, size) * 255
    with torch.no_grad():
        out = net.forward_train(x)
        expected = logical_anomaly_map(out.encoder_features, out.decoder_features, size)
        assert torch.allclose(net(x), expected, atol=1e-6)
    assert (expected >= 0).all() and (expected <= 6 + 1e-5).all()  # 3 levels of (1 - cos) in [0, 2]


def test_identical_features_give_a_zero_map() -> None:
    feats = [torch.rand(1, 8, 4, 4), torch.rand(1, 16, 2, 2)]
    assert logical_anomaly_map(feats, feats, 16).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("text", "codes"), [(False, True), (True, False), (False, False)], ids=["no-text", "no-codes", "neither"]
)
def test_ablation_switches_remove_their_prior(text: bool, codes: bool) -> None:
    net, size = build("tiny", use_text_prior=text, use_codebooks=codes)
    assert (net.text_prior is not None) == text
    assert (net.quantizers is not None) == codes
    x = torch.rand(1, 3, size, size) * 255
    out = net.forward_train(x)
    assert bool(out.vq_losses) == codes and bool(out.code_indices) == codes
    assert net.eval()(x).shape == (1, 1, size, size)


def test_text_prior_without_embedding_is_a_config_error() -> None:
    cfg = get_preset("tiny")
    with pytest.raises(ConfigError, match="no text embedding was given"):
        NpgmfLogicalNet(cfg.logical, cfg.image_size, None, pretrained=False, weights=None)
    cfg.logical.use_text_prior = False
    NpgmfLogicalNet(cfg.logical, cfg.image_size, None, pretrained=False, weights=None, warn_random=False)


def test_image_size_not_multiple_of_32_is_a_config_error() -> None:
    cfg = get_preset("tiny")
    with pytest.raises(ConfigError, match="image size 112 is not a multiple of 32"):
        NpgmfLogicalNet(cfg.logical, 112, torch.randn(CLIP_DIM), pretrained=False, weights=None)


def test_window_size_not_dividing_a_stage_names_that_stage() -> None:
    cfg = get_preset("tiny")
    cfg.logical.window_size = 16  # 128 px: stage 3 works on 8x8
    with pytest.raises(ConfigError, match=r"decoder stage 3 \(stride 16, image size 128\): its 8x8 grid"):
        NpgmfLogicalNet(cfg.logical, 128, torch.randn(CLIP_DIM), pretrained=False, weights=None)


def test_text_embedding_and_codebooks_are_saved_with_the_weights() -> None:
    net, _ = build("tiny")
    state = net.state_dict()
    assert state["text_prior.embedding"].shape == (CLIP_DIM,)
    assert {f"quantizers.{k}.codebook" for k in range(3)} <= set(state)
    assert any(k.startswith("encoder.body.") for k in state)  # loading never needs the hub


def test_onnx_graph_reproduces_the_map_with_constant_priors(tmp_path: Path) -> None:
    net, size = build("tiny")
    net.eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, size, size) * 255
    with torch.no_grad():
        unfrozen = net(x).numpy()
    net.text_prior.freeze()
    path = export_onnx(net, x[:1], tmp_path / "logical.onnx", "image", ["logical_map"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]  # batch 3 through a graph traced at batch 1
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected - unfrozen).max() <= 1e-6  # freezing FC(text) changes nothing

    ops = graph_op_types(path)
    assert {"MatMul", "ArgMin", "Gather"} <= ops  # the codebook lookup, no loop
    assert ops <= TENSORRT_OPS, f"ops TensorRT may not parse: {sorted(ops - TENSORRT_OPS)}"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]  # no text input: the prior is inside
    shapes = {tuple(t.dims) for t in graph.initializer}
    cfg = get_preset("tiny").logical
    assert (cfg.codebook_size, cfg.codebook_dim) in shapes  # codebooks are constants
    assert not any(CLIP_DIM in s for s in shapes)  # FC(text) folded: no CLIP-sized tensor left
