"""The logical anomaly map (NPGMF Eq. 7) and the feature-reproduction (cosine) loss it mirrors.

M_L = sum_k Up_bilinear(1 - cos(f_E^k, f_D^k)), the cosine over channels at every position. The loss
averages the same per-position distances per level and sums the levels, so training minimises what the
map measures (Reverse Distillation's code flattens each whole map into one vector instead).

Example:
    >>> enc = [torch.rand(1, 8, 4, 4)]
    >>> logical_anomaly_map(enc, enc, size=16).abs().max() < 1e-6
    tensor(True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-8


def cosine_distance(enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """1 - cos over channels: (B, C, h, w) x 2 -> (B, 1, h, w), in [0, 2]."""
    return 1.0 - (F.normalize(enc, dim=1, eps=COSINE_EPS) * F.normalize(dec, dim=1, eps=COSINE_EPS)).sum(
        dim=1, keepdim=True
    )


def logical_anomaly_map(enc: list[torch.Tensor], dec: list[torch.Tensor], size: int) -> torch.Tensor:
    """Eq. 7: sum over levels of bilinearly upsampled (1 - cos) maps -> (B, 1, size, size)."""
    levels = [
        F.interpolate(cosine_distance(e, d), size=(size, size), mode="bilinear", align_corners=False)
        for e, d in zip(enc, dec, strict=True)
    ]
    return sum(levels[1:], levels[0])


def cosine_loss(enc: list[torch.Tensor], dec: list[torch.Tensor]) -> torch.Tensor:
    """Sum over levels of the mean per-position (1 - cos)."""
    return sum((cosine_distance(e, d).mean() for e, d in zip(enc, dec, strict=True)), torch.zeros(()))
