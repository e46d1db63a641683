"""The in-graph kNN head's int8 search (`export --knn-search int8`) against exact references.

References: numpy brute force (`knn.BruteForceNN`) for the distances, onnxruntime running the exported
head for the integer arithmetic (its QuantizeLinear / MatMulInteger kernels are an independent
implementation of what `Int8Scores` computes in torch), and the exact-search bundle for the whole detector.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from npgmf_edge.errors import ConfigError
from npgmf_edge.export.bundle import ExportOptions
from npgmf_edge.export.graph_heads import KnnHead
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.knn import BruteForceNN
from npgmf_edge.runtime.inspector import Inspector

GRID = (6, 8)  # 48 queries per image


def _exact(bank: np.ndarray, features: np.ndarray) -> np.ndarray:
    queries = features.transpose(0, 2, 3, 1).reshape(-1, bank.shape[1])
    return BruteForceNN().fit(bank).search(queries, k=1)[0].reshape(len(features), *GRID)


def _clustered(rng: np.random.Generator, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A bank of tight clusters far apart (non-negative, as ReLU features are), and queries near its rows:
    the nearest row is unambiguous, so a correct int8 first pass must find it."""
    centres = rng.random((40, dim)) * 4.0
    bank = np.repeat(centres, 5, axis=0) + rng.normal(0, 0.25, (200, dim))
    picks = rng.integers(0, len(bank), size=2 * GRID[0] * GRID[1])
    queries = bank[picks] + rng.normal(0, 0.01, (len(picks), dim))
    features = queries.reshape(2, *GRID, dim).transpose(0, 3, 1, 2)
    return bank.astype(np.float32), np.ascontiguousarray(features, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_search_finds_the_exact_distance_when_the_nearest_row_is_clear(seed: int) -> None:
    bank, features = _clustered(np.random.default_rng(seed))
    with torch.no_grad():
        got = KnnHead(bank, GRID, "int8")(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(got, _exact(bank, features), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_search_is_exact_with_every_row_a_candidate_and_never_underestimates(seed: int) -> None:
    """Uniform data is full of near-ties; queries reach outside the bank's range (saturation). With every
    row re-ranked the search is exhaustive; with 4, a distance can only be to a farther real row."""
    rng = np.random.default_rng(seed)
    bank = rng.random((64, 16)).astype(np.float32)
    features = (rng.random((2, 16, *GRID)) * 1.5 - 0.25).astype(np.float32)
    exact = _exact(bank, features)
    with torch.no_grad():
        every = KnnHead(bank, GRID, "int8", candidates=len(bank))(torch.from_numpy(features)).numpy()
        four = KnnHead(bank, GRID, "int8", candidates=4)(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(every, exact, rtol=1e-5, atol=1e-6)
    assert (four >= exact - 1e-5).all()


def test_the_exported_int8_head_runs_integer_ops_and_equals_torch(tmp_path: Path) -> None:
    bank, features = _clustered(np.random.default_rng(3))
    features[0, :, 0, 0] += 10.0  # one query far outside the bank's range: saturates to 255
    head = KnnHead(bank, GRID, "int8").eval()
    path = export_onnx(head, torch.from_numpy(features), tmp_path / "knn.onnx", "features", ["distances"])
    assert {"QuantizeLinear", "MatMulInteger", "TopK"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": features})[0]
    with torch.no_grad():
        expected = head(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.reshape(-1)[1:], _exact(bank, features).reshape(-1)[1:], rtol=1e-5)


def test_an_int8_search_bundle_scores_the_test_set_as_the_exact_one(
    int8_search_bundle: Path, graph_bundle: Path, tiny_run
) -> None:
    """On the make-data test set the 4 re-ranked candidates always held the nearest row (measured: scores
    equal to 1e-6); the graph bundle's fp32 graph is the exact reference."""
    from npgmf_edge.runtime.manifest import read_manifest

    paths = [s.image_path for s in tiny_run[1].test]
    scores = {}
    for name, bundle in (("int8", int8_search_bundle), ("exact", graph_bundle)):
        with Inspector.open(bundle, precision="fp32") as inspector:
            scores[name] = np.array([r.score for r in inspector.inspect(paths)])
    np.testing.assert_allclose(scores["int8"], scores["exact"], rtol=1e-5, atol=1e-5)
    manifest = read_manifest(int8_search_bundle)
    assert manifest.coreset["search"] == "int8" and manifest.coreset["candidates"] == 4
    assert manifest.engines == {}
    graph_ops = {n.op_type for n in onnx.load(str(int8_search_bundle / "model.fp32.onnx")).graph.node}
    assert "MatMulInteger" in graph_ops


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ExportOptions(knn="faiss", knn_search="int8"), "use it with --knn graph"),
        (ExportOptions(knn_search="int8", tensorrt=True), "TensorRT does not run"),
        (ExportOptions(knn_search="int4"), "--knn-search must be one of exact, int8"),
    ],
)
def test_impossible_search_options_are_refused_before_work(options: ExportOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options.validate()


def test_the_cli_refuses_int8_search_with_faiss_in_one_line(cli, tiny_run, tmp_path: Path) -> None:
    out = tmp_path / "b"
    code, _, err = cli("export", tiny_run[0], "--out", out, "--knn", "faiss", "--knn-search", "int8")
    assert code != 0
    assert err.strip().splitlines()[-1].startswith("error:") and "--knn graph" in err
    assert "Traceback" not in err and not out.exists()
