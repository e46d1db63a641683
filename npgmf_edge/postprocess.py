"""Fusion of the two branch maps into one anomaly map and image score (SPEC §2.3, Eq. 11): the single post
stage of every backend (torch detector, Inspector, verify, bench; `export.graph_heads` transcribes it).

M = w_S (M_S - mu_S) / sigma_S + w_L (M_L - mu_L) / sigma_L, then Gaussian smoothing. The image score is
either max(M) (fusion level "pixel", the paper's) or, level "image", the weighted sum of each branch's own
image score max(smooth(M_X)) standardised by its mean and std on the normal validation images (late fusion).
numpy + OpenCV only, so the runtime can import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

REFERENCE_SIZE = 256  # the paper's sigma = 4 px is given at 256 px input
FUSION_LEVELS = ("pixel", "image")  # where the branches meet for the image score: maps or image scores


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


@dataclass(frozen=True)
class FusionParams:
    """What the post stage needs besides the two branch maps: Eq. 11's statistics and weights, the
    smoothing, the fusion level and (level "image") each branch's image-score statistics."""

    structural: BranchStats
    logical: BranchStats
    weight_structural: float
    weight_logical: float
    sigma: float
    level: str = "pixel"
    structural_image: BranchStats | None = None
    logical_image: BranchStats | None = None


def branch_image_scores(branch_maps: np.ndarray, sigma: float) -> np.ndarray:
    """One branch's own image scores: max of its smoothed map; (B, H, W) -> (B,)."""
    return image_scores(smooth(branch_maps, sigma))


def post_process(
    structural: np.ndarray, logical: np.ndarray, params: FusionParams
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (B, H, W) branch maps -> fused, smoothed (B, H, W) map (Eq. 11) and (B,) image scores."""
    p = params
    if p.level == "pixel":
        fused = fuse(
            structural, logical, p.structural, p.logical, p.weight_structural, p.weight_logical, p.sigma
        )
        return fused, image_scores(fused)
    if p.level != "image" or p.structural_image is None or p.logical_image is None:
        raise ValueError(f"fusion level {p.level!r} needs image statistics and one of {FUSION_LEVELS}")
    # Smoothing is linear and its kernel sums to 1: smoothing each branch once serves both the fused map
    # and the branch image scores.
    smooth_s, smooth_l = smooth(structural, p.sigma), smooth(logical, p.sigma)
    fused = p.weight_structural * standardize(smooth_s, p.structural) + p.weight_logical * standardize(
        smooth_l, p.logical
    )
    scores = p.weight_structural * standardize(image_scores(smooth_s), p.structural_image) + (
        p.weight_logical * standardize(image_scores(smooth_l), p.logical_image)
    )
    return fused.astype(np.float32), scores
