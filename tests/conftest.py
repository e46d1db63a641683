"""Fixtures shared by every test package."""

from pathlib import Path

import pytest

from npgmf_edge.config import get_preset
from npgmf_edge.data import AnomalyDataset, load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset

# Small enough to generate in well under a second; every logical and structural defect type appears once.
SMALL_LOCO = SyntheticConfig(
    image_size=64, n_train=10, n_validation=4, n_test_good=4, n_logical=4, n_structural=3
)


@pytest.fixture(scope="session")
def loco_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The category folder of a small generated MVTec LOCO AD dataset (64 px; 10/4/4/4/3 images).

    Session-scoped and shared: tests must not modify it (copy it with shutil.copytree first).
    `load_dataset(loco_dataset_dir)` reads it.
    """
    out = tmp_path_factory.mktemp("loco") / "data"
    summary = generate_dataset(out, SMALL_LOCO)
    return Path(summary["dataset"])


# A trained tiny run on the default `make-data` set and its bundles, shared by the export and runtime tests.
# Two epochs, the tiny preset's ImageNet EfficientNet-Lite0 and a random CLIP prior (chosen explicitly):
# they pin the mechanics of export and runtime (parity with torch, precision costs on real features, file
# contracts), not detection quality. Imports are local: collecting tests stays cheap.


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnomalyDataset]:
    from npgmf_edge.training.run import train_run

    root = tmp_path_factory.mktemp("tiny_run")
    generate_dataset(root / "data", SyntheticConfig(seed=0))
    dataset = load_dataset(root / "data")
    cfg = get_preset("tiny")
    cfg.weights.random_clip = True  # the encoder is the preset's ImageNet EfficientNet-Lite0
    cfg.train.epochs = 2
    train_run(dataset, cfg, root / "run", branch="all")
    return root / "run", dataset


@pytest.fixture(scope="session")
def faiss_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + fp16 + int8 graphs, kNN by FAISS in the runtime."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "faiss"
    export_bundle(
        tiny_run[0], out, ExportOptions(precisions=("fp32", "fp16", "int8"), knn="faiss", tensorrt=False)
    )
    return out


@pytest.fixture(scope="session")
def graph_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + int8 single graphs with kNN, fusion and smoothing inside."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "graph"
    export_bundle(tiny_run[0], out, ExportOptions(precisions=("fp32", "int8"), knn="graph", tensorrt=False))
    return out


@pytest.fixture(scope="session")
def int8_search_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 single graph whose kNN runs its coreset GEMM in INT8 and re-ranks candidates exactly."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "int8_search"
    export_bundle(tiny_run[0], out, ExportOptions(knn="graph", knn_search="int8", tensorrt=False))
    return out


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run the console entry point in-process: cli("predict", ...) -> (exit code, stdout, stderr)."""
    import sys

    from npgmf_edge.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["npgmf-edge", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out, captured.err

    return run
