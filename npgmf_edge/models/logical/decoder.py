"""RD-style decoder with multi-semantic fusion, and the image reconstruction head.

Each `DecoderStage` k works on encoder level k's grid and channels:

    x (previous stage, or the OCE) -> x2 transposed-conv upsampling to level k's grid
      -> concat(reconstruction features, text context, quantised codes of level k) -> 1x1 conv
      -> LeWin blocks -> de-ResNet residual blocks -> f_D^k

Upsampling first (as Reverse Distillation's de-ResNet stage), so the fusion's three inputs share level k's
grid. `ReconstructionHead` maps the finest features back to a normalised RGB image (its loss anchors the
decoder to the pixels).

Example:
    >>> stage = DecoderStage(512, 256, extra_channels=0, resolution=8, block="basic", depth=1,
    ...                      lewin_depth=1, heads=2, window_size=4, name="decoder stage 3")
    >>> stage(torch.zeros(1, 512, 4, 4)).shape
    torch.Size([1, 256, 8, 8])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from npgmf_edge.models.logical.blocks import UpsampleBlock, conv_bn_relu, make_stage
from npgmf_edge.models.logical.lewin import LeWinStage
from npgmf_edge.models.text_prior import TextPrior

RECON_HEAD_CHANNELS = 32
RECON_HEAD_MIN_CHANNELS = 8  # the x2 upsamplings halve the width down to this


class DecoderStage(nn.Module):
    """Upsample x2, fuse with the priors (1x1 conv + LeWin), residual blocks -> f_D^k."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        extra_channels: int,
        resolution: int,
        block: str,
        depth: int,
        lewin_depth: int,
        heads: int,
        window_size: int,
        mlp_ratio: float = 2.0,
        name: str = "decoder stage",
    ) -> None:
        super().__init__()
        self.up = UpsampleBlock(in_channels, out_channels)
        self.project = nn.Conv2d(out_channels + extra_channels, out_channels, 1)
        self.lewin = LeWinStage(out_channels, resolution, lewin_depth, heads, window_size, mlp_ratio, name)
        self.blocks = make_stage(block, out_channels, out_channels, depth)

    def forward(
        self, x: torch.Tensor, text: TextPrior | None = None, codes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x from the coarser stage; `text` broadcasts its context to this grid; `codes` are level k's."""
        parts = [self.up(x)]
        if text is not None:
            parts.append(text(parts[0]))
        if codes is not None:
            parts.append(codes)
        return self.blocks(self.lewin(self.project(torch.cat(parts, dim=1))))


class ReconstructionHead(nn.Module):
    """Finest decoder features (stride s) -> RGB at input size: 3x3 conv, log2(s) x2 upsamplings, 3x3 conv."""

    def __init__(self, in_channels: int, stride: int) -> None:
        super().__init__()
        steps = int(math.log2(stride))
        layers: list[nn.Module] = [conv_bn_relu(in_channels, RECON_HEAD_CHANNELS, 3)]
        channels = RECON_HEAD_CHANNELS
        for _ in range(steps):
            halved = max(channels // 2, RECON_HEAD_MIN_CHANNELS)
            layers.append(UpsampleBlock(channels, halved))
            channels = halved
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
