"""Coreset samplers: ratio validation, the exact greedy k-center rule, chunking, and the simple variants."""

import math

import numpy as np
import pytest
import torch

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.structural.sampler import (
    GreedyCoresetSampler,
    IdentitySampler,
    LoopGreedyCoresetSampler,
    RandomSampler,
    coreset_size,
    covering_radius,
    random_projection,
)


def _clustered_bank(n: int = 3000, dim: int = 48, clusters: int = 40, seed: int = 0) -> torch.Tensor:
    """Points around a few centers at different scales: the structure patch features have."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=g) * 4
    scales = torch.rand(clusters, 1, generator=g) + 0.1
    owner = torch.randint(clusters, (n,), generator=g)
    return centers[owner] + torch.randn(n, dim, generator=g) * scales[owner]


def _textbook_k_center(points: np.ndarray, k: int, first: int) -> list[int]:
    """Gonzalez's farthest-first traversal, written out with float64 numpy and a full distance matrix."""
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    picks = [first]
    nearest = dist[first].copy()
    for _ in range(k - 1):
        picks.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, dist[picks[-1]])
    return picks


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_zero_one_raises_config_error(ratio):
    for make in (GreedyCoresetSampler, LoopGreedyCoresetSampler, RandomSampler):
        with pytest.raises(ConfigError) as info:
            make(ratio)
        assert str(info.value) == f"coreset ratio must be in (0, 1], got {ratio!r}"


def test_coreset_size_rounds_down_and_keeps_at_least_one():
    assert coreset_size(1000, 0.1) == 100
    assert coreset_size(1005, 0.1) == 100
    assert coreset_size(5, 0.01) == 1
    assert coreset_size(7, 1.0) == 7


@pytest.mark.parametrize("bank", ["gaussian", "clustered"])
def test_greedy_picks_equal_the_plain_loop_reference_on_the_same_projection(bank):
    features = torch.randn(1500, 96) if bank == "gaussian" else _clustered_bank(1500, 96)
    fast = GreedyCoresetSampler(0.1, projection_dim=32, seed=3).select(features)
    loop = LoopGreedyCoresetSampler(0.1, projection_dim=32, seed=3).select(features)
    assert len(fast) == 150
    assert torch.equal(fast, loop)


def test_greedy_picks_are_a_farthest_first_traversal():
    features = _clustered_bank(600, 24)
    sampler = GreedyCoresetSampler(0.1, projection_dim=24, seed=1)  # projection_dim == D: no projection
    picks = sampler.select(features).tolist()
    assert picks == _textbook_k_center(features.double().numpy(), 60, first=picks[0])
    assert len(set(picks)) == len(picks)


def test_small_chunks_give_the_same_picks_as_one_chunk():
    features = _clustered_bank(2000, 40)
    whole = GreedyCoresetSampler(0.2, projection_dim=16, seed=0, chunk_size=1 << 20).select(features)
    chunked = GreedyCoresetSampler(0.2, projection_dim=16, seed=0, chunk_size=97).select(features)
    assert torch.equal(whole, chunked)


def test_greedy_covers_better_than_random():
    features = _clustered_bank(3000, 32)
    greedy = GreedyCoresetSampler(0.05, projection_dim=32).select(features)
    random = RandomSampler(0.05).select(features)
    assert covering_radius(features, greedy) < 0.7 * covering_radius(features, random)


def test_projection_is_seeded_and_skipped_when_not_reducing():
    features = torch.randn(100, 64)
    a = random_projection(features, 16, seed=5)
    assert a.shape == (100, 16)
    assert torch.equal(a, random_projection(features, 16, seed=5))
    assert not torch.equal(a, random_projection(features, 16, seed=6))
    assert torch.equal(random_projection(features, 64, seed=5), features)


def test_run_returns_selected_rows_for_tensors_and_arrays():
    features = _clustered_bank(500, 16)
    sampler = GreedyCoresetSampler(0.1, projection_dim=8)
    idx = sampler.select(features)
    assert torch.equal(sampler.run(features), features[idx])
    out = sampler.run(features.numpy())
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, features.numpy()[idx.numpy()])


def test_ratio_one_keeps_everything():
    features = torch.randn(50, 8)
    assert torch.equal(GreedyCoresetSampler(1.0).run(features), features)
    assert torch.equal(IdentitySampler().run(features), features)


def test_random_sampler_is_seeded_without_repeats():
    features = torch.randn(1000, 4)
    a = RandomSampler(0.1, seed=0).select(features)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(a, RandomSampler(0.1, seed=0).select(features))


def test_empty_bank_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        GreedyCoresetSampler(0.1).run(torch.empty(0, 8))


def test_selected_count_matches_floor_of_ratio():
    features = torch.randn(1234, 8)
    assert len(GreedyCoresetSampler(0.25, projection_dim=4).select(features)) == math.floor(1234 * 0.25)
