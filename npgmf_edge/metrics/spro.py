"""Saturated per-region overlap (sPRO, MVTec LOCO AD; Bergmann et al., IJCV 2022), computed exactly.

Definition (as the official MVTec LOCO AD evaluation computes it):
- a pixel is positive at threshold t when its score is strictly greater than t (`map > t`);
- each annotated defect region d has a saturation area s_d (from `defects_config.json`: a fraction of the
  region rounded down to whole pixels, or an absolute pixel count capped at the region's area);
  sPRO_d(t) = min(1, #{pixels of d with map > t} / s_d), and sPRO(t) is the mean over all regions of all
  images (regions of one image may overlap; each counts on its own);
- FPR(t) = false positives / defect-free pixels, pooled over every image of the set: all pixels of good
  images and, in anomalous images, the pixels outside every region of that image;
- AUC-sPRO(L) = area under sPRO over FPR from 0 to L (trapezoids; the height at L interpolated on the
  curve's segment), divided by L.

The official script samples thresholds and refines them adaptively; here the curve is exact: one point per
distinct score. Its area is computed in closed form from one sort of the defect-free scores, so a test set
of thousands of maps takes seconds and large tied regions (flat maps) need no special care. Plain PRO
(MVTec AD) is the special case s_d = area of d over connected components (see `pro.py`).

Example:
    >>> region = SaturatedRegion(mask=gt == 1, saturation_area=100)
    >>> auc_spro([amap_good, amap_bad], [[], [region]])[0.05]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from npgmf_edge.metrics._inputs import boolean_mask, same_length, score_maps

MAX_FPRS = (0.01, 0.05, 0.1, 0.3, 1.0)  # the integration limits the official LOCO script reports


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class SaturatedRegion:
    """One annotated defect: where it is and how many detected pixels saturate it.

    `saturation_area` is a whole pixel count (see `DefectSpec.saturation_area` for the official rounding);
    values outside [1, region area] are clipped to it. The official script would divide by zero for a
    saturation area of 0 (a relative threshold times a region smaller than one pixel); one pixel is the
    smallest area a detector can cover.
    """

    mask: np.ndarray  # (H, W), nonzero = inside the region
    saturation_area: int


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class RegionCurve:
    """An exact (s)PRO curve: one point per distinct score, thresholds descending, FPR ascending.

    The first point (threshold = highest score) is (0, 0); the last (threshold = -inf) is (1, 1).
    """

    thresholds: np.ndarray
    fprs: np.ndarray
    overlaps: np.ndarray  # mean (s)PRO at each threshold


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class RankedScores:
    """Everything the curve depends on: the sorted defect-free scores and the weighted region scores.

    A region with saturation area s contributes 1/(D*s) to the mean sPRO for each of its s highest-scoring
    pixels that is above the threshold, and nothing for the rest, because min(1, tp/s) = (number of those
    top-s pixels above t)/s. So the mean sPRO at t is the summed weight of the entries whose score exceeds t.
    """

    negatives: np.ndarray  # ascending
    entries: np.ndarray  # ascending scores of the counting region pixels
    cumulative_weight: np.ndarray  # cumulative_weight[i] = weight of entries[:i]; length len(entries) + 1
    region_scores: tuple[np.ndarray, ...]  # every score inside every region (thresholds of the full curve)

    @property
    def total_weight(self) -> float:
        return float(self.cumulative_weight[-1])

    def count_negatives_above(self, thresholds: np.ndarray) -> np.ndarray:
        return self.negatives.size - np.searchsorted(self.negatives, thresholds, side="right")

    def weight_above(self, thresholds: np.ndarray, inclusive: bool = False) -> np.ndarray:
        """Summed entry weight with score > t (or >= t when `inclusive`)."""
        side = "left" if inclusive else "right"
        below = np.searchsorted(self.entries, thresholds, side=side)
        return self.total_weight - self.cumulative_weight[below]


def rank_scores(
    anomaly_maps: Sequence[np.ndarray],
    regions_per_image: Sequence[Sequence[tuple[np.ndarray, int]]],
) -> RankedScores:
    """Collect and sort what the curve needs; `regions_per_image[i]` lists (mask, saturation area) pairs."""
    maps = score_maps(anomaly_maps)
    same_length(maps, regions_per_image, "anomaly maps and region lists")
    negatives: list[np.ndarray] = []
    entries: list[np.ndarray] = []
    region_scores: list[np.ndarray] = []
    saturations: list[int] = []
    for index, (amap, regions) in enumerate(zip(maps, regions_per_image, strict=True)):
        if not regions:
            negatives.append(amap.ravel())
            continue
        defect = np.zeros(amap.shape, dtype=bool)
        for mask, saturation_area in regions:
            inside = boolean_mask(mask, amap.shape, index, "region mask")
            defect |= inside
            scores = amap[inside]
            if scores.size == 0:
                raise ValueError(f"a region of image {index} is empty; every region needs at least one pixel")
            region_scores.append(scores)
            saturation = int(min(max(int(saturation_area), 1), scores.size))
            if saturation < scores.size:  # only the `saturation` highest scores can change min(1, tp/s)
                scores = np.partition(scores, scores.size - saturation)[scores.size - saturation :]
            entries.append(scores)
            saturations.append(saturation)
        negatives.append(amap[~defect])
    if not saturations:
        raise ValueError("no ground-truth regions: (s)PRO needs at least one anomalous image with a region")
    negative_scores = np.concatenate(negatives)
    if negative_scores.size == 0:
        raise ValueError("no defect-free pixels: the false positive rate is undefined")
    negative_scores.sort()
    weights = np.repeat(1.0 / (len(saturations) * np.asarray(saturations, dtype=np.float64)), saturations)
    entry_scores = np.concatenate(entries)
    order = np.argsort(entry_scores, kind="stable")
    cumulative = np.concatenate(([0.0], np.cumsum(weights[order])))
    return RankedScores(negative_scores, entry_scores[order], cumulative, tuple(region_scores))


def region_curve(ranked: RankedScores) -> RegionCurve:
    """The exact curve: a point at every distinct score (where FPR or (s)PRO can change), then (1, 1)."""
    thresholds = np.unique(np.concatenate((ranked.negatives, *ranked.region_scores)))[::-1]
    fprs = ranked.count_negatives_above(thresholds) / ranked.negatives.size
    overlaps = ranked.weight_above(thresholds)
    return RegionCurve(
        thresholds=np.concatenate((thresholds.astype(np.float64), [-np.inf])),
        fprs=np.concatenate((fprs, [1.0])),
        overlaps=np.concatenate((overlaps, [ranked.total_weight])),
    )


def region_curve_areas(ranked: RankedScores, max_fprs: Iterable[float]) -> dict[float, float]:
    """Normalised area under the exact curve up to each limit, without building the curve.

    Walking down the defect-free scores v_0 >= v_1 >= ... (FPR k/N after k of them), the segment that adds
    the tie group at value v is a trapezoid of width (group size)/N between heights S(>v) and S(>=v), where
    S is the summed entry weight above a threshold. Summed per pixel this is
        A(K) = 1/(2N) * sum_entries w * (max(0, K - g) + max(0, K - h))
    with g = #negatives >= entry score and h = #negatives > entry score, exact at every tie-group boundary
    K. The limit's own tie group is added as a partial trapezoid with a linearly interpolated height,
    which is what the official trapezoid does on that segment.
    """
    n = ranked.negatives.size
    g = n - np.searchsorted(ranked.negatives, ranked.entries, side="left")
    h = n - np.searchsorted(ranked.negatives, ranked.entries, side="right")
    weights = np.diff(ranked.cumulative_weight)

    def area_to(k: int) -> float:
        return float(np.dot(weights, np.maximum(k - g, 0) + np.maximum(k - h, 0))) / (2.0 * n)

    areas: dict[float, float] = {}
    for max_fpr in max_fprs:
        limit = float(max_fpr)
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"FPR limits must lie in (0, 1]; got {max_fpr}")
        target = limit * n  # the limit in units of defect-free pixels
        if target >= n:
            area = area_to(n)
        else:
            # The defect-free score whose tie group [start, stop) holds the limit.
            value = ranked.negatives[n - 1 - int(np.floor(target))]
            start = n - int(np.searchsorted(ranked.negatives, value, side="right"))
            stop = n - int(np.searchsorted(ranked.negatives, value, side="left"))
            value_array = np.asarray([value])
            low = float(ranked.weight_above(value_array)[0])
            high = float(ranked.weight_above(value_array, inclusive=True)[0])
            fraction = (target - start) / (stop - start)
            height_at_limit = low + (high - low) * fraction
            area = area_to(start) + 0.5 * (low + height_at_limit) * (target - start) / n
        areas[max_fpr] = area / limit
    return areas


def _region_pairs(defects: Sequence[Sequence[SaturatedRegion]]) -> list[list[tuple[np.ndarray, int]]]:
    return [[(region.mask, region.saturation_area) for region in image] for image in defects]


def spro_curve(
    anomaly_maps: Sequence[np.ndarray], defects: Sequence[Sequence[SaturatedRegion]]
) -> RegionCurve:
    """The exact sPRO-over-FPR curve; `defects[i]` lists image i's regions (empty for a good image)."""
    return region_curve(rank_scores(anomaly_maps, _region_pairs(defects)))


def auc_spro(
    anomaly_maps: Sequence[np.ndarray],
    defects: Sequence[Sequence[SaturatedRegion]],
    max_fprs: Iterable[float] = MAX_FPRS,
) -> dict[float, float]:
    """AUC-sPRO up to each FPR limit, normalised by the limit: {0.01: ..., 0.05: ..., ...}. `defects[i]`
    lists the regions of image i (empty for a good one); ValueError without a region or defect-free pixel."""
    return region_curve_areas(rank_scores(anomaly_maps, _region_pairs(defects)), max_fprs)
