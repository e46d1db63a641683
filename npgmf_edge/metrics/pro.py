"""Per-region overlap (PRO) and AUPRO as the MVTec AD evaluation defines them (Bergmann et al., CVPR 2020).

Each connected component of a ground-truth mask (8-connectivity, like `scipy.ndimage.label` with a 3x3
structuring element in the official script) is one region; PRO(t) is the mean over all regions of all
images of the fraction of the region with score > t; FPR(t) pools the defect-free pixels of every image;
AUPRO is the area under PRO over FPR up to 0.3, divided by 0.3. This is sPRO with every region's
saturation area equal to its size, so it shares `spro.py`'s exact computation.

Example:
    >>> aupro([amap_good, amap_bad], [None, gt_mask_bad])
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from npgmf_edge.metrics._inputs import boolean_mask, same_length, score_maps
from npgmf_edge.metrics.spro import RegionCurve, rank_scores, region_curve, region_curve_areas

PRO_MAX_FPR = 0.3  # the MVTec AD integration limit


def connected_regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a boolean mask, one boolean mask each (none for an empty mask)."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == label for label in range(1, count)]


def _component_pairs(
    anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]
) -> list[list[tuple[np.ndarray, int]]]:
    same_length(anomaly_maps, masks, "anomaly maps and masks")
    pairs = []
    for index, (amap, mask) in enumerate(zip(anomaly_maps, masks, strict=True)):
        inside = boolean_mask(mask, amap.shape, index, "mask")
        pairs.append([(region, int(region.sum())) for region in connected_regions(inside)])
    return pairs


def pro_curve(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> RegionCurve:
    """The exact PRO-over-FPR curve; `masks[i]` is image i's ground truth (nonzero = defect; None = good)."""
    maps = score_maps(anomaly_maps)
    return region_curve(rank_scores(maps, _component_pairs(maps, masks)))


def aupro(
    anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], max_fpr: float = PRO_MAX_FPR
) -> float:
    """Area under the PRO curve up to `max_fpr`, normalised by `max_fpr` (MVTec AD: 0.3)."""
    maps = score_maps(anomaly_maps)
    return region_curve_areas(rank_scores(maps, _component_pairs(maps, masks)), [max_fpr])[max_fpr]
