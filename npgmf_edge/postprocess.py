"""Fusion of the two branch maps into one anomaly map (SPEC §2.3, Eq. 11), shared by every backend.

M = w_S (M_S - mu_S) / sigma_S + w_L (M_L - mu_L) / sigma_L, then Gaussian smoothing; image score = max(M).
numpy + OpenCV only, so the runtime can import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_SIZE = 256  # the paper's sigma = 4 px is given at 256 px input


@dataclass(frozen=True)
class BranchStats:
    """Mean and standard deviation of all pixel scores of one branch on normal validation images."""

    mean: float
    std: float


def gaussian_sigma_for(image_size: int, sigma_at_reference: float) -> float:
    """Scale the smoothing sigma with the input size so the blur covers the same image fraction."""
    return sigma_at_reference * image_size / REFERENCE_SIZE


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size spanning +-4 sigma, like scipy's default truncation."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def smooth(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a (H, W) or (B, H, W) map (OpenCV, BORDER_REFLECT)."""
    if sigma <= 0:
        return anomaly_map.astype(np.float32)
    ksize = gaussian_kernel_size(sigma)
    maps = anomaly_map.reshape(-1, *anomaly_map.shape[-2:]).astype(np.float32)
    out = np.stack([cv2.GaussianBlur(m, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT) for m in maps])
    return out.reshape(anomaly_map.shape)


def standardize(anomaly_map: np.ndarray, stats: BranchStats) -> np.ndarray:
    """Put a branch map on the scale of its own normal-image pixel statistics."""
    return (anomaly_map - stats.mean) / stats.std


def fuse(
    structural: np.ndarray,
    logical: np.ndarray,
    structural_stats: BranchStats,
    logical_stats: BranchStats,
    weight_structural: float,
    weight_logical: float,
    sigma: float,
) -> np.ndarray:
    """Eq. 11 followed by Gaussian smoothing; inputs (H, W) or (B, H, W) at the same resolution."""
    fused = weight_structural * standardize(structural, structural_stats) + weight_logical * standardize(
        logical, logical_stats
    )
    return smooth(fused, sigma)


def image_scores(anomaly_maps: np.ndarray) -> np.ndarray:
    """Image score = maximum of its map; (B, H, W) -> (B,)."""
    return anomaly_maps.reshape(anomaly_maps.shape[0], -1).max(axis=1)
