"""PRO / AUPRO (MVTec AD): regions are 8-connected components, FPR pools defect-free pixels, limit 0.3."""

import numpy as np
import pytest

from npgmf_edge.metrics import aupro, connected_regions, pro_curve


def test_connected_regions_joins_diagonal_neighbours() -> None:
    mask = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    regions = connected_regions(mask)
    assert sorted(int(r.sum()) for r in regions) == [1, 1, 2]
    assert connected_regions(np.zeros((3, 3), dtype=bool)) == []


def test_aupro_averages_per_region_not_per_pixel() -> None:
    # A big region found at once and a 1-pixel region found only after every defect-free pixel.
    amap = np.zeros((4, 6))
    mask = np.zeros((4, 6), dtype=bool)
    mask[:3, :3] = True  # 9 px, score 1
    amap[:3, :3] = 1.0
    mask[3, 5] = True  # 1 px, score 0 like the background
    # Curve: (0,0) -> (0,0.5) -> (1,1): at FPR x <= 1 the height is 0.5 + 0.5x.
    expected = (0.5 * 0.3 + 0.25 * 0.09) / 0.3
    assert aupro([amap], [mask]) == pytest.approx(expected)
    curve = pro_curve([amap], [mask])
    assert curve.overlaps.tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_aupro_counts_every_pixel_of_good_images_as_defect_free() -> None:
    bad_found = np.array([[1.0, 0.0]])  # the defect outscores every defect-free pixel: AUPRO 1
    # Missed: the good image's 0.5s come first, (0,0) -> (2/3,0) -> (2/3,1) -> (1,1).
    bad_missed = np.array([[0.2, 0.0]])
    good = np.array([[0.5, 0.5]])
    assert aupro([bad_found, good], [np.array([[1, 0]]), None]) == pytest.approx(1.0)
    assert aupro([bad_missed, good], [np.array([[1, 0]]), None]) == pytest.approx(0.0)


def test_aupro_rejects_a_mask_of_another_size() -> None:
    with pytest.raises(ValueError, match="mask of image 0 has shape"):
        aupro([np.zeros((2, 2))], [np.ones((3, 3))])
