"""Locally aware patch features for the structural branch (PatchCore, Roth et al. CVPR 2022, §3.1).

Two aggregations of the encoder's level-2 and level-3 maps (strides 8 and 16) into one (B, D, h, w) map on
the level-2 grid, chosen by `structural.aggregation` (docs/DESIGN.md "Structural branch" says which wins
where); level 3 is upsampled bilinearly (`align_corners=False`) to level 2's grid in both:

- `reference` (`PatchFeatureAggregator`), PatchCore's reference code (`PatchMaker.patchify`,
  `PatchCore._embed`, `MeanMapper`, `Aggregator`): each position's p x p neighbourhood unfolded into a
  flat C*p*p vector (zero padding counted), adaptive-average-pooled per level to `pretrain_embed_dim`, the
  levels concatenated and pooled again to D = `embed_dim`. Unlike a per-channel mean, this keeps which
  neighbour a value came from.
- `local_mean` (`LocalMeanAggregator`), anomalib's `generate_embedding`: each channel averaged over its
  p x p neighbourhood (as `nn.AvgPool2d(3, 1, 1)`), the levels concatenated; D = C2 + C3. The exported
  graph is AveragePool / Resize / Concat.

The reference's steps are linear and parameter-free, so per level unfold + both poolings are one constant
(D, C, p, p) kernel: one zero-padded Conv2d, which commutes with the upsampling, and the final pooling
sends each level to a contiguous band of the D outputs, so each level's Conv computes only its band. The
exported graph is Conv / Resize / Slice / Add / Concat: no Unfold, no uneven adaptive pooling.

`PatchFeatureExtractor` = `FrozenEncoder` + either aggregator, the patch-feature part of each bundle graph;
on the logical branch's encoder (`share_logical_encoder`) it takes levels 2 and 3 from that encoder's
levels 1-3, so one encoder pass serves both branches.

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

from npgmf_edge.config import STRUCTURAL_AGGREGATIONS
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


def _check_levels(channels: Sequence[int], patch_size: int) -> None:
    """ConfigError unless there are exactly two levels and the neighbourhood has an odd side."""
    if len(channels) != 2:
        raise ConfigError(f"the structural branch aggregates 2 levels, got channels {list(channels)}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ConfigError(f"patch_size must be a positive odd number, got {patch_size}")


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
        _check_levels(channels, patch_size)
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
        self.bands: list[tuple[int, int]] = []  # output rows [first, end) each level contributes to
        for level, c in enumerate(self.channels):
            block = final[:, level * pretrain_embed_dim : (level + 1) * pretrain_embed_dim]
            # Columns in unfold order: channel-major, then the p x p offsets row by row.
            weight = block @ adaptive_pool_matrix(c * patch_size * patch_size, pretrain_embed_dim)
            used = weight.abs().sum(dim=1).nonzero().flatten()
            first, end = int(used[0]), int(used[-1]) + 1
            self.bands.append((first, end))
            kernel = weight[first:end].reshape(end - first, c, patch_size, patch_size).float()
            # Constant, rebuilt from the config: not part of the saved weights.
            self.register_buffer(f"kernel{level}", kernel, persistent=False)
        # Adaptive pooling bins are contiguous and at most one straddles the level boundary, so the bands
        # are [0, end0) and [first1, D) with end0 - first1 in {0, 1}.

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f2, f3 = features
        pad = self.patch_size // 2
        z2 = F.conv2d(f2, self.kernel0, padding=pad)
        z3 = F.conv2d(f3, self.kernel1, padding=pad)
        z3 = F.interpolate(z3, size=z2.shape[-2:], mode="bilinear", align_corners=False)
        shared = self.bands[0][1] - self.bands[1][0]  # 0 or 1 output row fed by both levels
        if shared == 0:
            return torch.cat([z2, z3], dim=1)
        first1 = self.bands[1][0]
        pieces = [z2[:, :first1], z2[:, first1:] + z3[:, :shared], z3[:, shared:]]
        return torch.cat([p for p in pieces if p.shape[1] > 0], dim=1)


class LocalMeanAggregator(nn.Module):
    """[f2 (B, C2, h, w), f3 (B, C3, h/2, w/2)] -> (B, C2 + C3, h, w): per-channel p x p means, concatenated
    (what that costs and gains: docs/BENCHMARKS.md "Structural aggregation")."""

    def __init__(self, channels: Sequence[int], patch_size: int = 3) -> None:
        super().__init__()
        _check_levels(channels, patch_size)
        self.channels = [int(c) for c in channels]
        self.patch_size = patch_size
        self.embed_dim = sum(self.channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        f2, f3 = (
            F.avg_pool2d(f, self.patch_size, stride=1, padding=self.patch_size // 2, count_include_pad=True)
            for f in features
        )
        f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f2, f3], dim=1)


def build_aggregator(
    aggregation: str, channels: Sequence[int], pretrain_embed_dim: int, embed_dim: int, patch_size: int
) -> PatchFeatureAggregator | LocalMeanAggregator:
    """The aggregator `structural.aggregation` names (`pretrain_embed_dim`, `embed_dim`: reference only)."""
    if aggregation == "reference":
        return PatchFeatureAggregator(channels, pretrain_embed_dim, embed_dim, patch_size)
    if aggregation == "local_mean":
        return LocalMeanAggregator(channels, patch_size)
    raise ConfigError(
        f"structural.aggregation must be one of {', '.join(STRUCTURAL_AGGREGATIONS)}, got {aggregation!r}"
    )


class PatchFeatureExtractor(nn.Module):
    """Raw pixels (B, 3, S, S) in [0, 255] -> patch features (B, D, S/8, S/8), a `--knn faiss` graph's
    `patch_features`. `levels`: where levels 2 and 3 are in the encoder's outputs ((0, 1) or (1, 2))."""

    def __init__(
        self,
        encoder: FrozenEncoder,
        aggregator: PatchFeatureAggregator | LocalMeanAggregator,
        levels: tuple[int, int] = (0, 1),
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
