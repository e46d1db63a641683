"""Frozen ImageNet feature extractor over timm `features_only`, with explicit weight sources.

Weights come from exactly one of three places, chosen by the caller, never by a silent fallback:
the timm hub (`pretrained=True`), a local checkpoint file (`weights=PATH`, for offline stations), or
random initialisation (`pretrained=False`, which logs a warning because scores are then meaningless
for real products).

Example:
    >>> enc = FrozenEncoder("resnet18", out_indices=(1, 2, 3), pretrained=False)
    >>> [f.shape[1] for f in enc(torch.zeros(1, 3, 64, 64))]
    [64, 128, 256]
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from npgmf_edge.errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNormalize(nn.Module):
    """Maps RGB pixels in [0, 255] to ImageNet-normalised values.

    Lives inside every network so the exported graphs take raw pixels and every backend
    (torch, onnxruntime, TensorRT) normalises identically.
    """

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


def create_feature_extractor(
    name: str,
    out_indices: tuple[int, ...],
    pretrained: bool,
    weights: str | Path | None = None,
    warn_random: bool = True,
) -> nn.Module:
    """Build a timm `features_only` model from the hub, a local file, or (explicitly) random weights.

    `warn_random=False` silences the random-init warning for callers that overwrite the weights right
    away from their own state dict (e.g. loading a trained run), so only a real random choice warns.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        overlay = {"file": str(path)}
        try:
            model = timm.create_model(
                name,
                pretrained=True,
                features_only=True,
                out_indices=out_indices,
                pretrained_cfg_overlay=overlay,
            )
        except (RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"cannot load {name} weights from {path}: {exc}") from exc
        _check_fully_loaded(model, name, path)
        return model
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
            f"cannot download pretrained {name} weights ({type(exc).__name__}: {exc}); "
            "offline, pass --weights PATH to a local checkpoint, or --no-pretrained for random weights"
        ) from exc


def _check_fully_loaded(model: nn.Module, name: str, path: Path) -> None:
    """timm loads feature extractors non-strictly (the classifier is dropped), so a checkpoint of a
    smaller sibling (resnet18 for resnet34) would load partly and leave the rest random. Refuse that."""
    saved = timm.models.load_state_dict(str(path), weights_only=True)
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


class FrozenEncoder(nn.Module):
    """A frozen, eval-mode timm backbone returning the feature maps at `out_indices`.

    `train()` is overridden so BatchNorm statistics never change while the rest of a model trains.
    Input: RGB pixels in [0, 255], shape (B, 3, H, W). Output: list of feature maps.
    """

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
        self.normalize = ImageNormalize()
        self.body = create_feature_extractor(name, out_indices, pretrained, weights, warn_random)
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
