"""The single post stage of every path (torch detector, Inspector, verify, bench, export; SPEC §2.3):
patch distances -> structural map, Eq. 11 fusion of the two branch maps, smoothing, image score.
`export.graph_heads` transcribes it into the `--knn graph` bundles (tests/export/test_fusion_head.py holds
the two equal).

Structural map: each patch's distance to its nearest coreset patch, upsampled bilinearly with half-pixel
centres (OpenCV INTER_LINEAR, = torch `align_corners=False` and ONNX Resize "half_pixel").
M = w_S (M_S - mu_S) / sigma_S + w_L (M_L - mu_L) / sigma_L, then Gaussian smoothing. The image score is
either max(M) (fusion level "pixel", the paper's) or, level "image", the weighted sum of each branch's own
image score max(smooth(M_X)) standardised by its mean and std on the normal validation images (late fusion).
numpy + OpenCV only, so the runtime can import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

REFERENCE_SIZE = 256  # the paper's sigma = 4 px is given at 256 px input
FUSION_LEVELS = ("pixel", "image")  # where the branches meet for the image score: maps or image scores


class PatchSearch(Protocol):
    """What the structural map needs of a nearest-neighbour scorer (`knn`, or the graph's kNN head)."""

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray | None]: ...


def patch_distances(patch_features: np.ndarray, knn: PatchSearch) -> np.ndarray:
    """(B, D, h, w) patch features -> (B, h, w) distances to the nearest coreset patch: one search for every
    patch of the batch."""
    b, d, h, w = patch_features.shape
    queries = np.ascontiguousarray(patch_features.transpose(0, 2, 3, 1).reshape(-1, d), dtype=np.float32)
    return knn.search(queries, k=1)[0].reshape(b, h, w)


def distances_to_map(distances: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) patch distances -> (B, H, W) float32 map: one bilinear resize with the batch as channels
    (half-pixel centres); no smoothing (that belongs to fusion)."""
    b = distances.shape[0]
    stacked = np.ascontiguousarray(distances.transpose(1, 2, 0), dtype=np.float32)
    resized = cv2.resize(stacked, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(size[0], size[1], b).transpose(2, 0, 1)


def structural_maps(patch_features: np.ndarray, knn: PatchSearch, image_size: int) -> np.ndarray:
    """(B, D, h, w) patch features -> (B, S, S) structural maps at the model's input size."""
    return distances_to_map(patch_distances(patch_features, knn), (image_size, image_size))


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


def weighted_sum(
    structural: np.ndarray,
    logical: np.ndarray,
    stats: tuple[BranchStats, BranchStats],
    weights: tuple[float, float],
) -> np.ndarray:
    """Eq. 11: w_S (X_S - mu_S) / sigma_S + w_L (X_L - mu_L) / sigma_L, of maps or of image scores."""
    return weights[0] * standardize(structural, stats[0]) + weights[1] * standardize(logical, stats[1])


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
    stats, weights = (structural_stats, logical_stats), (weight_structural, weight_logical)
    return smooth(weighted_sum(structural, logical, stats, weights), sigma)


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
    weights = (p.weight_structural, p.weight_logical)
    fused = weighted_sum(smooth_s, smooth_l, (p.structural, p.logical), weights)
    image_stats = (p.structural_image, p.logical_image)
    scores = weighted_sum(image_scores(smooth_s), image_scores(smooth_l), image_stats, weights)
    return fused.astype(np.float32), scores
