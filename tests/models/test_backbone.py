"""FrozenEncoder: explicit weight sources (local file / random), frozen parameters, eval-mode BN."""

import logging
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from npgmf_edge.errors import WeightsError
from npgmf_edge.models.backbone import FrozenEncoder

OUT = (1, 2, 3)


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
