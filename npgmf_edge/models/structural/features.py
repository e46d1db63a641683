"""Locally aware patch features for the structural branch (PatchCore, Roth et al. CVPR 2022, §3.1).

`PatchFeatureAggregator` turns the encoder's level-2 and level-3 maps (strides 8 and 16) into one
(B, D, h, w) map on the level-2 grid: a `patch_size` x `patch_size` local average of each level, level 3
bilinearly upsampled to level 2's grid, each level adaptive-average-pooled over channels to
`pretrain_embed_dim`, concatenated, and adaptive-average-pooled again to `embed_dim` (PatchCore's
`Preprocessing` + `Aggregator`). All of it is linear and parameter-free, so it is computed in the cheapest
equivalent order: the two channel poolings fold into one constant (D, C_k) matrix per level, applied as a
1x1 convolution *before* the spatial averaging and the upsampling (both commute with a per-pixel channel
map), so level 3 is upsampled with D channels instead of C_3. Same numbers, fewer FLOPs, and the exported
graph is plain Conv / AveragePool / Resize.

`PatchFeatureExtractor` = `FrozenEncoder` + aggregator; it is what `structural.onnx` contains. It can also
sit on the logical branch's encoder (`share_logical_encoder`): the encoder then returns levels 1-3 and the
aggregator takes levels 2 and 3 from that list, so one encoder pass can serve both branches.

Example:
    >>> enc = FrozenEncoder("resnet18", out_indices=(2, 3), pretrained=False)
    >>> ext = PatchFeatureExtractor(enc, PatchFeatureAggregator(enc.channels, 128, 128), levels=(0, 1))
    >>> ext(torch.zeros(1, 3, 128, 128)).shape
    torch.Size([1, 128, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.backbone import FrozenEncoder


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """(out_dim, in_dim) matrix M with M @ v == F.adaptive_avg_pool1d(v, out_dim) for any vector v.

    Bin o averages inputs floor(o * in / out) .. ceil((o + 1) * in / out) - 1, as torch defines it.
    """
    matrix = torch.zeros(out_dim, in_dim, dtype=torch.float64)
    for o in range(out_dim):
        start = (o * in_dim) // out_dim
        end = -((-(o + 1) * in_dim) // out_dim)  # ceil
        matrix[o, start:end] = 1.0 / (end - start)
    return matrix


class PatchFeatureAggregator(nn.Module):
    """[f2 (B, C2, h, w), f3 (B, C3, h/2, w/2)] -> (B, embed_dim, h, w) locally aware patch features."""

    def __init__(
        self,
        channels: Sequence[int],
        pretrain_embed_dim: int,
        embed_dim: int,
        patch_size: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != 2:
            raise ConfigError(f"the structural branch aggregates 2 levels, got channels {list(channels)}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be a positive odd number, got {patch_size}")
        if pretrain_embed_dim < 1 or embed_dim < 1:
            raise ConfigError(
                f"embedding dimensions must be >= 1, got pretrain_embed_dim={pretrain_embed_dim}, "
                f"embed_dim={embed_dim}"
            )
        self.channels = [int(c) for c in channels]
        self.pretrain_embed_dim = pretrain_embed_dim
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        final = adaptive_pool_matrix(len(channels) * pretrain_embed_dim, embed_dim)
        for level, c in enumerate(self.channels):
            block = final[:, level * pretrain_embed_dim : (level + 1) * pretrain_embed_dim]
            weight = (block @ adaptive_pool_matrix(c, pretrain_embed_dim)).float()
            # Constant, rebuilt from the config: not part of the saved weights.
            self.register_buffer(f"proj{level}", weight[:, :, None, None], persistent=False)

    def _local_average(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_size == 1:
            return x
        pad = self.patch_size // 2
        # Border patches average only real neighbours (no zeros pulled in from the padding).
        return F.avg_pool2d(x, self.patch_size, stride=1, padding=pad, count_include_pad=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f2, f3 = features
        z2 = self._local_average(F.conv2d(f2, self.proj0))
        z3 = self._local_average(F.conv2d(f3, self.proj1))
        z3 = F.interpolate(z3, size=z2.shape[-2:], mode="bilinear", align_corners=False)
        return z2 + z3


class PatchFeatureExtractor(nn.Module):
    """Raw pixels (B, 3, S, S) in [0, 255] -> patch features (B, D, S/8, S/8). Exported as structural.onnx.

    `levels` are the positions of levels 2 and 3 in the encoder's output list: (0, 1) for an encoder built
    with out_indices (2, 3), (1, 2) for the logical branch's (1, 2, 3).
    """

    def __init__(
        self, encoder: FrozenEncoder, aggregator: PatchFeatureAggregator, levels: tuple[int, int] = (0, 1)
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.aggregator = aggregator
        self.levels = tuple(levels)
        self.stride = encoder.strides[self.levels[0]]

    @property
    def embed_dim(self) -> int:
        return self.aggregator.embed_dim

    def aggregate(self, encoder_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Patch features from an encoder pass already made (e.g. by the logical branch)."""
        return self.aggregator([encoder_features[i] for i in self.levels])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.encoder(pixels))

    def grid_size(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the feature grid for a square input of side `image_size`."""
        with torch.no_grad():
            device = next(self.encoder.parameters()).device
            shape = self(torch.zeros(1, 3, image_size, image_size, device=device)).shape
        return int(shape[-2]), int(shape[-1])
