"""Fusion (Eq. 11), smoothing and image scores against independent references."""

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter

from npgmf_edge.knn import BruteForceNN
from npgmf_edge.postprocess import (
    BranchStats,
    FusionParams,
    distances_to_map,
    fuse,
    gaussian_sigma_for,
    image_scores,
    post_process,
    smooth,
    structural_maps,
)


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


def _image_level(structural_image: BranchStats, logical_image: BranchStats, sigma: float) -> FusionParams:
    return FusionParams(
        BranchStats(1.0, 2.0),
        BranchStats(4.0, 3.0),
        1.0,
        0.5,
        sigma,
        "image",
        structural_image,
        logical_image,
    )


def test_image_level_score_is_the_weighted_sum_of_standardised_branch_maxima() -> None:
    structural = np.zeros((2, 8, 8), np.float32)
    logical = np.zeros((2, 8, 8), np.float32)
    structural[0, 1, 1], logical[0, 5, 5] = 7.0, 2.0
    structural[1, 3, 3], logical[1, 2, 2] = 1.0, 12.0
    params = _image_level(BranchStats(2.0, 5.0), BranchStats(4.0, 4.0), sigma=0.0)
    _, scores = post_process(structural, logical, params)
    # image 0: 1 * (7 - 2) / 5 + 0.5 * (2 - 4) / 4 = 1 - 0.25
    # image 1: 1 * (1 - 2) / 5 + 0.5 * (12 - 4) / 4 = -0.2 + 1
    assert np.allclose(scores, [0.75, 0.8])


def test_image_level_fused_map_is_eq11_of_the_same_weights() -> None:
    rng = np.random.default_rng(3)
    structural, logical = rng.random((2, 3, 32, 32)).astype(np.float32)
    params = _image_level(BranchStats(0.5, 0.2), BranchStats(0.4, 0.1), sigma=1.5)
    fused, _ = post_process(structural, logical, params)
    reference = fuse(structural, logical, params.structural, params.logical, 1.0, 0.5, 1.5)
    assert np.abs(fused - reference).max() < 1e-4


def test_image_level_branch_scores_are_maxima_of_smoothed_maps() -> None:
    rng = np.random.default_rng(4)
    structural, logical = rng.random((2, 2, 32, 32)).astype(np.float32)
    params = _image_level(BranchStats(0.0, 1.0), BranchStats(0.0, 1.0), sigma=2.0)
    params = dataclasses.replace(params, weight_logical=0.0)
    _, scores = post_process(structural, logical, params)
    expected = [gaussian_filter(m, sigma=2.0, mode="reflect", truncate=4.0).max() for m in structural]
    assert np.allclose(scores, expected, atol=1e-3)


def test_pixel_level_score_is_the_maximum_of_the_fused_map() -> None:
    rng = np.random.default_rng(5)
    structural, logical = rng.random((2, 2, 16, 16)).astype(np.float32)
    params = FusionParams(BranchStats(0.5, 0.2), BranchStats(0.4, 0.1), 1.0, 3.0, 1.0)
    fused, scores = post_process(structural, logical, params)
    assert np.array_equal(fused, fuse(structural, logical, params.structural, params.logical, 1.0, 3.0, 1.0))
    assert np.array_equal(scores, fused.reshape(2, -1).max(axis=1))


def test_structural_map_is_the_old_torch_interpolation() -> None:
    """The map the torch path made before the post stage was one: F.interpolate, bilinear,
    align_corners=False (transcribed here), on random patch distances, square and not."""
    import torch
    import torch.nn.functional as F

    distances = np.random.default_rng(2).random((3, 7, 9)).astype(np.float32) * 30
    for size in ((64, 64), (32, 48)):
        old = F.interpolate(
            torch.from_numpy(distances)[:, None], size=size, mode="bilinear", align_corners=False
        )
        ours = distances_to_map(distances, size)
        assert ours.shape == (3, *size) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, old[:, 0].numpy(), rtol=1e-6, atol=1e-5)


def test_structural_map_uses_half_pixel_centres() -> None:
    # Two patches [a, b] -> 4 px: centres at -0.25, 0.25, 0.75, 1.25 (clamped at the borders).
    a, b = 1.0, 5.0
    out = distances_to_map(np.array([[[a, b]]], np.float32), (1, 4))
    np.testing.assert_allclose(out[0, 0], [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b], rtol=1e-6)


def test_structural_maps_search_every_patch_of_the_batch() -> None:
    rng = np.random.default_rng(3)
    coreset = rng.normal(size=(20, 5)).astype(np.float32)
    features = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    maps = structural_maps(features, BruteForceNN().fit(coreset), 8)
    nearest = np.array(
        [
            [
                [np.linalg.norm(coreset - features[i, :, y, x], axis=1).min() for x in range(4)]
                for y in range(3)
            ]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(maps, distances_to_map(nearest.astype(np.float32), (8, 8)), rtol=1e-5)
