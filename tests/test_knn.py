"""Nearest-neighbour scorers: FAISS and brute force agree, distances are Euclidean, save/load round-trips."""

import numpy as np
import pytest

from npgmf_edge.errors import ConfigError
from npgmf_edge.knn import (
    ApproximateFaissNN,
    BruteForceNN,
    FaissNN,
    create_scorer,
)


def _data(n_bank=2000, n_query=700, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_bank, dim)).astype(np.float32), rng.normal(size=(n_query, dim)).astype(
        np.float32
    )


def _exact(bank, queries, k):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@pytest.mark.parametrize("k", [1, 3])
def test_faiss_and_brute_force_agree_on_euclidean_distances(k):
    bank, queries = _data()
    d_faiss, i_faiss = FaissNN(on_gpu=False).fit(bank).search(queries, k)
    d_brute, i_brute = BruteForceNN(chunk_size=128).fit(bank).search(queries, k)
    d_exact, i_exact = _exact(bank, queries, k)
    assert d_faiss.dtype == d_brute.dtype == np.float32
    assert d_faiss.shape == d_brute.shape == (len(queries), k)
    np.testing.assert_allclose(d_faiss, d_brute, rtol=1e-4)
    np.testing.assert_allclose(d_brute, d_exact, rtol=1e-4)  # Euclidean, not squared
    np.testing.assert_array_equal(i_faiss, i_brute)
    np.testing.assert_array_equal(i_brute, i_exact)


def test_brute_force_chunk_size_does_not_change_results():
    bank, queries = _data(500, 300, 16)
    a = BruteForceNN(chunk_size=7).fit(bank).search(queries, 2)
    b = BruteForceNN(chunk_size=10_000).fit(bank).search(queries, 2)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)


def test_faiss_index_file_loads_back_to_identical_search_results(tmp_path):
    bank, queries = _data()
    scorer = FaissNN(on_gpu=False).fit(bank)
    path = scorer.save(tmp_path / "coreset.faiss")
    loaded = FaissNN.load(path, on_gpu=False)
    assert loaded.size == len(bank) and loaded.dim == bank.shape[1]
    for k in (1, 4):
        before, after = scorer.search(queries, k), loaded.search(queries, k)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])


def test_brute_force_npy_loads_back_to_identical_search_results(tmp_path):
    bank, queries = _data(300, 50, 8)
    scorer = BruteForceNN().fit(bank)
    path = scorer.save(tmp_path / "coreset.npy")
    assert path.name == "coreset.npy" and list(tmp_path.iterdir()) == [path]  # no temp file left
    np.testing.assert_array_equal(np.load(path), bank)
    loaded = BruteForceNN.load(path)
    for a, b in zip(scorer.search(queries, 2), loaded.search(queries, 2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ivf_index_with_all_lists_probed_is_exact_and_round_trips(tmp_path):
    bank, queries = _data(4000, 200, 32)
    ivf = ApproximateFaissNN(on_gpu=False, nlist=16, nprobe=16).fit(bank)
    d_ivf, i_ivf = ivf.search(queries, 1)
    d_flat, i_flat = FaissNN(on_gpu=False).fit(bank).search(queries, 1)
    np.testing.assert_array_equal(i_ivf, i_flat)
    np.testing.assert_allclose(d_ivf, d_flat, rtol=1e-4)
    loaded = ApproximateFaissNN.load(ivf.save(tmp_path / "ivf.faiss"), on_gpu=False, nprobe=16)
    np.testing.assert_array_equal(loaded.search(queries, 1)[1], i_ivf)


def test_a_bank_vector_is_at_distance_about_zero_from_itself():
    bank, _ = _data(200, 1, 32)
    for scorer in (FaissNN(on_gpu=False), BruteForceNN()):
        distances, indices = scorer.fit(bank).search(bank, 1)
        np.testing.assert_array_equal(indices[:, 0], np.arange(200))
        assert distances.max() < 1e-2 * np.median(_exact(bank, bank, 2)[0][:, 1])


def test_misuse_is_reported():
    bank, queries = _data(10, 2, 4)
    with pytest.raises(RuntimeError, match="before fit"):
        BruteForceNN().search(queries)
    with pytest.raises(ValueError, match="dimension"):
        FaissNN(on_gpu=False).fit(bank).search(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        BruteForceNN().fit(bank).search(queries, k=11)
    with pytest.raises(ConfigError) as info:
        create_scorer("annoy")
    assert str(info.value) == "unknown knn backend 'annoy'; choose one of: faiss, faiss_ivf, brute"
