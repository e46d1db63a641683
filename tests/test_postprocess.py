"""Fusion (Eq. 11), smoothing and image scores against independent references."""

import numpy as np
from scipy.ndimage import gaussian_filter

from npgmf_edge.postprocess import BranchStats, fuse, gaussian_sigma_for, image_scores, smooth


def test_smoothing_matches_scipy_gaussian_filter() -> None:
    rng = np.random.default_rng(0)
    anomaly_map = rng.random((64, 64)).astype(np.float32)
    ours = smooth(anomaly_map, 2.0)
    reference = gaussian_filter(anomaly_map, sigma=2.0, mode="reflect", truncate=4.0)
    assert np.abs(ours - reference).max() < 1e-3


def test_smoothing_handles_a_batch_like_single_maps() -> None:
    maps = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    batch = smooth(maps, 1.5)
    assert np.allclose(batch[2], smooth(maps[2], 1.5))


def test_fusion_standardizes_and_weights_each_branch() -> None:
    structural = np.full((1, 8, 8), 3.0, np.float32)
    logical = np.full((1, 8, 8), 10.0, np.float32)
    fused = fuse(structural, logical, BranchStats(1.0, 2.0), BranchStats(4.0, 3.0), 1.0, 3.0, sigma=0.0)
    # 1 * (3 - 1) / 2 + 3 * (10 - 4) / 3 = 1 + 6
    assert np.allclose(fused, 7.0)


def test_image_score_is_the_maximum_of_the_map() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, 2, 3] = 5.0
    assert image_scores(maps).tolist() == [0.0, 5.0]


def test_sigma_scales_with_input_size() -> None:
    assert gaussian_sigma_for(256, 4.0) == 4.0
    assert gaussian_sigma_for(128, 4.0) == 2.0
