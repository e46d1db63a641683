"""sPRO / AUC-sPRO: hand-computed cases and a slow reference following the official definition literally."""

import numpy as np
import pytest
from scipy import ndimage

from npgmf_edge.metrics import MAX_FPRS, SaturatedRegion, auc_spro, aupro, pro_curve, spro_curve

LIMITS = (*MAX_FPRS, 0.5)


def reference_trapezoid(x, y, x_max):
    """The official integration, written out: trapezoids up to x_max, the last one interpolated."""
    area = 0.0
    for i in range(len(x) - 1):
        x0, x1, y0, y1 = x[i], x[i + 1], y[i], y[i + 1]
        if x1 <= x_max:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < x_max:
            y_limit = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (x_max - x0)
    return area / x_max


def reference_auc_spro(maps, defects, limits=LIMITS):
    """Loop over every distinct score (plus one below all), binarise with `map > t`, average per region."""
    scores = np.unique(np.concatenate([m.ravel() for m in maps]))
    thresholds = [*scores[::-1], scores[0] - 1.0]
    fprs, spros = [], []
    for t in thresholds:
        fp = negatives = 0
        per_region = []
        for amap, regions in zip(maps, defects, strict=True):
            positive = amap > t
            defect_free = np.ones(amap.shape, dtype=bool)
            for mask, saturation in regions:
                per_region.append(min(1.0, np.sum(positive & mask) / saturation))
                defect_free &= ~mask
            fp += np.sum(positive & defect_free)
            negatives += np.sum(defect_free)
        fprs.append(fp / negatives)
        spros.append(np.mean(per_region))
    return {limit: reference_trapezoid(fprs, spros, limit) for limit in limits}, (fprs, spros)


def regions_of(defects):
    return [[SaturatedRegion(mask, saturation) for mask, saturation in image] for image in defects]


def random_case(seed: int, levels: int | None):
    """Small maps (quantised to `levels` values for ties), overlapping rectangles, good images."""
    rng = np.random.default_rng(seed)
    maps, defects = [], []
    for index in range(7):
        amap = rng.random((12, 10))
        if levels is not None:
            amap = np.round(amap * (levels - 1)) / (levels - 1)
        if index % 3 == 0:
            amap[:6] = 0.0  # a large flat region
        maps.append(amap.astype(np.float32))
        regions = []
        if index >= 2:
            for _ in range(rng.integers(1, 4)):
                mask = np.zeros((12, 10), dtype=bool)
                top, left = rng.integers(0, 9), rng.integers(0, 7)
                mask[top : top + rng.integers(1, 5), left : left + rng.integers(1, 5)] = True
                area = int(mask.sum())
                if rng.random() < 0.5:
                    saturation = int(np.floor(rng.choice([0.3, 0.5, 1.0]) * area))
                else:
                    saturation = min(int(rng.integers(1, 20)), area)
                regions.append((mask, max(saturation, 1)))
        defects.append(regions)
    return maps, defects


@pytest.mark.parametrize(("seed", "levels"), [(0, None), (1, 5), (2, 3), (3, 12), (4, 2)])
def test_auc_spro_equals_slow_reference_on_random_maps(seed, levels) -> None:
    maps, defects = random_case(seed, levels)
    expected, (fprs, spros) = reference_auc_spro(maps, defects)
    got = auc_spro(maps, regions_of(defects), LIMITS)
    for limit in LIMITS:
        assert got[limit] == pytest.approx(expected[limit], abs=1e-12)
    curve = spro_curve(maps, regions_of(defects))
    assert np.allclose(curve.fprs, fprs) and np.allclose(curve.overlaps, spros)


def test_auc_spro_caps_an_absolute_threshold_larger_than_the_defect() -> None:
    amap = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.0]])
    mask = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    # Saturation 5 > area 2: capped at 2, so covering both pixels gives sPRO 1 before any false positive.
    result = auc_spro([amap], [[SaturatedRegion(mask, saturation_area=5)]])
    assert all(value == pytest.approx(1.0) for value in result.values())


def test_auc_spro_with_relative_threshold_counts_whole_pixels() -> None:
    # Region of 5 px at relative saturation 0.5 -> floor(2.5) = 2 px saturate it: 0.9 and 0.5.
    amap = np.array([[0.9, 0.5, 0.3, 0.2, 0.1, 0.6, 0.4, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0]], dtype=bool)
    result = auc_spro([amap], [[SaturatedRegion(mask, saturation_area=2)]], (0.1, 0.5, 1.0))
    # Curve: (0,0) -> (0,0.5) -> (0.25,0.5) -> (0.25,1) -> (1,1).
    assert result[0.1] == pytest.approx(0.5)
    assert result[0.5] == pytest.approx((0.125 + 0.25) / 0.5)
    assert result[1.0] == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("second_saturation", "expected_at_005", "expected_at_1"),
    [(1, 1.0, 1.0), (2, 0.75625, 0.875)],
)
def test_auc_spro_with_two_defects_and_a_flat_zero_background(
    second_saturation, expected_at_005, expected_at_1
) -> None:
    good = np.zeros((2, 2))
    bad = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    first = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)  # relative 1.0 -> 2 px
    second = np.array([[0, 0, 0, 0], [1, 1, 0, 0]], dtype=bool)  # absolute 1 px, or relative 1.0 -> 2 px
    regions = [SaturatedRegion(first, 2), SaturatedRegion(second, second_saturation)]
    # All 8 defect-free pixels score 0: one tied step from FPR 0 to FPR 1 (the official script fails here).
    result = auc_spro([good, bad], [[], regions])
    assert result[0.05] == pytest.approx(expected_at_005)
    assert result[1.0] == pytest.approx(expected_at_1)


def test_spro_curve_binarises_with_strictly_greater_and_spans_zero_to_one() -> None:
    amap = np.full((4, 4), 0.5, dtype=np.float32)
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    curve = spro_curve([amap], [[SaturatedRegion(mask, 4)]])
    assert curve.thresholds[0] == 0.5 and curve.fprs[0] == 0.0 and curve.overlaps[0] == 0.0
    assert curve.fprs[-1] == 1.0 and curve.overlaps[-1] == pytest.approx(1.0)
    result = auc_spro([amap], [[SaturatedRegion(mask, 4)]], (0.05, 1.0))
    assert result == pytest.approx({0.05: 0.025, 1.0: 0.5})  # the diagonal: area L^2/2, divided by L


def test_auc_spro_of_a_perfect_map_is_one_at_every_limit() -> None:
    _, defects = random_case(5, None)
    perfect = [
        sum((m.astype(np.float32) for m, _ in regions), np.zeros((12, 10), np.float32)) for regions in defects
    ]
    result = auc_spro(perfect, regions_of(defects))
    assert all(value == pytest.approx(1.0) for value in result.values())


def test_auc_spro_clips_a_zero_saturation_area_to_one_pixel() -> None:
    amap = np.array([[0.9, 0.1, 0.2, 0.3]])
    mask = np.array([[1, 0, 0, 0]], dtype=bool)
    assert auc_spro([amap], [[SaturatedRegion(mask, 0)]])[0.05] == pytest.approx(1.0)


def test_auc_spro_explains_missing_regions_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="no ground-truth regions"):
        auc_spro([np.zeros((3, 3))], [[]])
    with pytest.raises(ValueError, match="region mask of image 0 has shape"):
        auc_spro([np.zeros((3, 3))], [[SaturatedRegion(np.ones((2, 2), bool), 1)]])
    with pytest.raises(ValueError, match="NaN"):
        auc_spro([np.full((3, 3), np.nan)], [[SaturatedRegion(np.ones((3, 3), bool), 1)]])
    with pytest.raises(ValueError, match="no defect-free pixels"):
        auc_spro([np.zeros((3, 3))], [[SaturatedRegion(np.ones((3, 3), bool), 1)]])


@pytest.mark.parametrize(("seed", "levels"), [(6, None), (7, 4)])
def test_aupro_equals_slow_reference_over_8_connected_components(seed, levels) -> None:
    maps, defects = random_case(seed, levels)
    masks = [np.logical_or.reduce([m for m, _ in regions]) if regions else None for regions in defects]
    components = []
    for mask in masks:
        if mask is None:
            components.append([])
            continue
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        components.append([(labels == k, int(np.sum(labels == k))) for k in range(1, count + 1)])
    expected, (fprs, pros) = reference_auc_spro(maps, components, (0.3,))
    assert aupro(maps, masks) == pytest.approx(expected[0.3], abs=1e-12)
    curve = pro_curve(maps, masks)
    assert np.allclose(curve.fprs, fprs) and np.allclose(curve.overlaps, pros)
