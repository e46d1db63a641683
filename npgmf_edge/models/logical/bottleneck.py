"""One-class embedding (OCE) bottleneck, as in Reverse Distillation (Deng & Li, CVPR 2022).

Each encoder level reaches the coarsest level's grid through stride-2 3x3 conv+BN+ReLU steps (each to the
next level's channels); the levels are concatenated and a stride-2 residual stage compresses them into the
one-class embedding at stride 32, with 2 x the coarsest channels.

Example:
    >>> oce = OCEBottleneck(channels=[64, 128, 256], strides=[4, 8, 16])
    >>> feats = [torch.zeros(1, 64, 32, 32), torch.zeros(1, 128, 16, 16), torch.zeros(1, 256, 8, 8)]
    >>> oce(feats).shape
    torch.Size([1, 512, 4, 4])
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.logical.blocks import conv_bn_relu, make_stage


class OCEBottleneck(nn.Module):
    """Multi-level fusion to the coarsest grid, then a stride-2 residual stage (the OCE)."""

    def __init__(self, channels: list[int], strides: list[int], block: str = "basic", depth: int = 1) -> None:
        super().__init__()
        for finer, coarser in itertools.pairwise(strides):
            if coarser != 2 * finer:
                raise ConfigError(
                    f"encoder levels must double their stride from one to the next, got strides {strides}"
                )
        self.align = nn.ModuleList()
        for level in range(len(channels)):
            convs = [
                conv_bn_relu(channels[i], channels[i + 1], 3, stride=2)
                for i in range(level, len(channels) - 1)
            ]
            self.align.append(nn.Sequential(*convs))  # empty Sequential = identity for the coarsest level
        self.out_channels = 2 * channels[-1]
        self.out_stride = 2 * strides[-1]
        self.embed = make_stage(block, channels[-1] * len(channels), self.out_channels, depth, stride=2)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        aligned = [align(f) for align, f in zip(self.align, feats, strict=True)]
        return self.embed(torch.cat(aligned, dim=1))
