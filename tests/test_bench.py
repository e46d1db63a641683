"""`npgmf-edge bench`: the report's shape and arithmetic, and the reference paths' agreement with the runtime.

Speed itself is never asserted here (docs/BENCHMARKS.md holds measured numbers with their commands)."""

import numpy as np
import pytest

from npgmf_edge.bench import BenchOptions, _add_ratios, format_bench_table, run_bench
from npgmf_edge.errors import ConfigError
from npgmf_edge.runtime import Inspector
from npgmf_edge.runtime.manifest import read_manifest
from npgmf_edge.runtime.selftest import GOLDEN_IMAGES


def test_bench_reports_every_path_and_batch_with_ratios_stages_and_a_soak(faiss_bundle, tiny_run) -> None:
    options = BenchOptions(
        backends=("onnxruntime", "torch"),
        batches=(1, 2),
        iters=3,
        warmup=1,
        run=tiny_run[0],
        threads=1,
        soak=6,
    )
    report = run_bench(faiss_bundle, options)
    assert [(r["backend"], r["batch"]) for r in report.rows] == [
        ("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)
    ]  # fmt: skip
    for row in report.rows:
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert set(row["stages_ms_per_image"]) == {"decode", "preprocess", "graph", "knn", "post"}
        assert sum(row["stages_ms_per_image"].values()) <= row["p99_ms"] * 1.05  # stages fit inside a call
        assert row["rss_mb"] > 0 and row["throughput_images_per_s"] > 0
    assert [r["p50_ratio"] for r in report.rows[:2]] == [1.0, 1.0]
    soaked = report.soak
    assert soaked["images"] == 6 and soaked["rss_end_mb"] > 0
    assert soaked["second_half_growth_mb"] == soaked["rss_end_mb"] - soaked["rss_middle_mb"]
    assert report.machine["cores"] >= 1 and "onnxruntime" in report.machine["libraries"]
    table = format_bench_table(report)
    assert len(table.splitlines()) == 3 + 4 + 2 + 1  # machine, bundle, header, 4 rows, 2 opens, soak
    # Opening the bundle ran its self-test once; torch has none. Its share is part of the open's time.
    onnxruntime, torch = report.open["onnxruntime"], report.open["torch"]
    assert onnxruntime["self_test_images"] == GOLDEN_IMAGES and torch["self_test_seconds"] is None
    assert 0 < onnxruntime["self_test_seconds"] <= onnxruntime["seconds"]


def test_ratios_are_each_rows_median_over_the_first_paths_at_the_same_batch() -> None:
    rows = [
        {"batch": 1, "p50_ms": 10.0},
        {"batch": 8, "p50_ms": 4.0},
        {"batch": 1, "p50_ms": 25.0},
        {"batch": 8, "p50_ms": 2.0},
    ]
    _add_ratios(rows)
    assert [r["p50_ratio"] for r in rows] == [1.0, 1.0, 2.5, 0.5]


@pytest.mark.parametrize("bundle", ["faiss_bundle", "graph_bundle"])
def test_the_torch_path_scores_as_the_runtime_does(bundle, request, tiny_run, tmp_path) -> None:
    """For either kNN mode, the torch path computes what the bundle computes (FAISS + numpy, or the
    network with kNN and fusion appended), so bench ratios compare backends, not methods."""
    from npgmf_edge.bench import bench_images
    from npgmf_edge.bench_reference import TorchPath

    path = request.getfixturevalue(bundle)
    images = bench_images(128, 3, None, tmp_path)
    with Inspector.open(path, precision="fp32") as inspector:
        expected = [(i.score, i.anomaly_map) for i in inspector.inspect(images)]
    torch_path = TorchPath(tiny_run[0], read_manifest(path), "fp32")
    got = torch_path.inspect(images)
    assert [i.score for i in got] == pytest.approx([score for score, _ in expected], rel=1e-5)
    for inspection, (_, anomaly_map) in zip(got, expected, strict=True):
        np.testing.assert_allclose(inspection.anomaly_map, anomaly_map, atol=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (BenchOptions(backends=("torch",)), "the torch reference paths need the run"),
        (BenchOptions(backends=("openvino",)), "unknown backend"),
        (BenchOptions(batches=(0,)), r"--batch must be >= 1, got \[0\]"),
        (BenchOptions(iters=0), "--iters must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        options.validate()


def test_a_batch_above_the_bundles_max_batch_is_one_line_before_any_work(cli, graph_bundle) -> None:
    """Issue 24, item 11: `bench --batch 100000` had no bound (400,000 image paths, 100,000 maps of full
    size held per call). The bundle's graphs take at most its max batch per call: that is the bound."""
    max_batch = read_manifest(graph_bundle).max_batch
    code, out, err = cli("bench", graph_bundle, "--batch", 1, "--batch", 100000)
    assert (code, out) == (1, "")
    assert err == (
        f"error: --batch 100000 is above the bundle's max batch of {max_batch} (the most its graphs take in "
        "one call); bench batches up to it, or re-export with a larger --max-batch\n"
    )
    assert cli("bench", graph_bundle, "--batch", max_batch, "--iters", 1, "--warmup", 0)[0] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_torch_cuda_path_agrees_with_the_cpu_runtime_within_fp16_error(
    faiss_bundle, tiny_run, tmp_path, cuda_graphs: bool
) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from npgmf_edge.bench import bench_images
    from npgmf_edge.bench_reference import TorchCudaPath
    from npgmf_edge.runtime.manifest import read_manifest

    images = bench_images(128, 4, None, tmp_path)
    with Inspector.open(faiss_bundle, precision="fp32") as inspector:
        expected = [i.score for i in inspector.inspect(images)]
    path = TorchCudaPath(tiny_run[0], read_manifest(faiss_bundle), "fp32", 4, cuda_graphs=cuda_graphs)
    got = [i.score for i in path.inspect(images)]
    assert got == pytest.approx(expected, rel=2e-2)
