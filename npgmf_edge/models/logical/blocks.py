"""Residual building blocks shared by the OCE bottleneck and the de-ResNet decoder (Reverse Distillation).

Two block types, chosen by `LogicalConfig.decoder_block`: `basic` (two 3x3 convs, as in ResNet18/34)
and `bottleneck` (1x1 reduce, 3x3, 1x1 expand, width = channels / 4, as in ResNet50/101). Both keep
their output channels equal to the requested `channels`, so decoder stages match the encoder level they
reproduce whatever the block type (the RD reference got this wrong for its resnet101 bottleneck).

Example:
    >>> block = make_block("basic", 64, 64)
    >>> block(torch.zeros(1, 64, 8, 8)).shape
    torch.Size([1, 64, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from npgmf_edge.errors import ConfigError

BLOCK_TYPES = ("basic", "bottleneck")
BOTTLENECK_REDUCTION = 4


def conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding for odd kernels."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """out = ReLU(body(x) + shortcut(x)); the shortcut is identity unless shapes change."""

    def __init__(self, body: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


def make_block(kind: str, in_ch: int, out_ch: int, stride: int = 1) -> nn.Module:
    """One residual block of type `kind` ("basic" | "bottleneck"); `stride` 2 halves the resolution."""
    if kind == "basic":
        body = nn.Sequential(
            conv_bn_relu(in_ch, out_ch, 3, stride),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    elif kind == "bottleneck":
        width = max(out_ch // BOTTLENECK_REDUCTION, 1)
        body = nn.Sequential(
            conv_bn_relu(in_ch, width, 1),
            conv_bn_relu(width, width, 3, stride),
            nn.Conv2d(width, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    else:
        raise ConfigError(f"unknown decoder_block {kind!r}; choose one of: {', '.join(BLOCK_TYPES)}")
    return _Residual(body, _shortcut(in_ch, out_ch, stride))


def make_stage(kind: str, in_ch: int, out_ch: int, depth: int, stride: int = 1) -> nn.Sequential:
    """`depth` blocks; the first one changes channels / resolution."""
    if depth < 1:
        raise ConfigError(f"decoder_depth must be >= 1, got {depth}")
    blocks = [make_block(kind, in_ch, out_ch, stride)]
    blocks += [make_block(kind, out_ch, out_ch) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class UpsampleBlock(nn.Module):
    """x2 upsampling by a 2x2 stride-2 transposed conv + BN + ReLU (the de-ResNet stage's first step)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.up(x)))
