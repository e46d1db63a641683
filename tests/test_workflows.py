"""Workflows (predict, evaluate) and the run detector's glue, with stand-in branches of known behaviour.

The branches here are simple functions of the pixels, so the expected scores, verdicts and files are
known exactly; the real networks are tested in tests/models and tests/training.
"""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from npgmf_edge import detector as detector_module
from npgmf_edge.calibration import calibrate, load_calibration
from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.detector import RunDetector
from npgmf_edge.errors import CheckpointError
from npgmf_edge.postprocess import gaussian_sigma_for
from npgmf_edge.rundir import TrainedRun
from npgmf_edge.workflows import evaluate_run, predict_images

SIZE = 64


def darkness(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in branch: dark pixels are anomalous (maps of shape (B, 1, S, S))."""
    return 1.0 - pixels.mean(dim=1, keepdim=True) / 255.0


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    for branch in ("structural", "logical"):
        (run / branch).mkdir(parents=True)
    cfg = get_preset("tiny")
    cfg.image_size = SIZE
    cfg.save(run / "config.json")

    def stand_in_run(run_dir: Path) -> TrainedRun:
        calibrated = (run_dir / "calibration.json").is_file()
        return TrainedRun(run_dir, cfg, None, None, load_calibration(run_dir) if calibrated else None)

    def stand_in_maps(run: TrainedRun, device: torch.device):
        return lambda pixels: {name: darkness(pixels)[:, 0].numpy() for name in ("structural", "logical")}

    monkeypatch.setattr(detector_module, "load_run", stand_in_run)
    monkeypatch.setattr(detector_module, "branch_map_fn", stand_in_maps)
    normal = (
        np.full((4, SIZE, SIZE), 0.2, np.float32) + np.random.default_rng(0).random((4, SIZE, SIZE)) * 0.01
    )
    calibrate(normal, normal, cfg.fusion, gaussian_sigma_for(SIZE, cfg.fusion.gaussian_sigma)).save(run)
    return run


def write_image(path: Path, dark_square: bool) -> Path:
    image = np.full((80, 96, 3), 205, np.uint8)
    if dark_square:
        image[20:40, 30:50] = 10
    cv2.imwrite(str(path), image)
    return path


def test_predict_flags_the_dark_square_and_writes_overlays_csv_and_json(
    fake_run: Path, tmp_path: Path
) -> None:
    images = [write_image(tmp_path / "ok.png", False), write_image(tmp_path / "bad.png", True)]
    summary = predict_images(fake_run, images, tmp_path / "pred")
    verdicts = [row["verdict"] for row in summary.predictions]
    assert verdicts == ["good", "anomalous"]
    with (tmp_path / "pred" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["verdict"] for r in rows] == verdicts
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["anomalous"] == 1
    overlay = cv2.imread(rows[1]["overlay"])
    assert overlay.shape == (80, 96, 3)


def test_inspection_map_has_the_original_resolution_and_peaks_on_the_defect(
    fake_run: Path, tmp_path: Path
) -> None:
    inspection = RunDetector(fake_run).inspect([write_image(tmp_path / "bad.png", True)])[0]
    assert inspection.anomaly_map.shape == (80, 96)
    row, col = np.unravel_index(np.argmax(inspection.anomaly_map), inspection.anomaly_map.shape)
    assert 20 <= row < 40 and 30 <= col < 50


def test_uncalibrated_run_refuses_to_give_verdicts(fake_run: Path, tmp_path: Path) -> None:
    (fake_run / "calibration.json").unlink()
    with pytest.raises(CheckpointError, match="is not calibrated"):
        RunDetector(fake_run).inspect([write_image(tmp_path / "ok.png", False)])


def test_directory_without_config_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a run directory"):
        RunDetector(tmp_path)


def test_evaluate_writes_metrics_report_overlays_and_official_tiff_maps(
    fake_run: Path, tmp_path: Path
) -> None:
    cfg = SyntheticConfig(
        image_size=SIZE, n_train=2, n_validation=2, n_test_good=3, n_logical=3, n_structural=3
    )
    generate_dataset(tmp_path / "data", cfg)
    dataset = load_dataset(tmp_path / "data")
    summary = evaluate_run(fake_run, dataset, tmp_path / "eval", maps_dir=tmp_path / "maps")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"structural", "logical", "fused"}
    assert "logical_anomalies" in metrics["fused"]["classification"]["auc_roc"]
    assert (tmp_path / "eval" / "report.html").read_text().count("<img") >= 4
    tiffs = sorted((tmp_path / "maps" / dataset.category / "test").rglob("*.tiff"))
    assert len(tiffs) == len(dataset.test)
    assert summary["table"].count("fused") >= 1


def test_evaluate_report_shows_the_logical_training_curve(fake_run: Path, tmp_path: Path) -> None:
    curve = {
        "train_loss": [3.0, 2.0, 1.5],
        "validation_loss": [3.2, 2.1, 2.2],
        "seconds": [1.0, 1.0, 1.0],
        "best_epoch": 2,
        "stopped_after_epoch": 3,
        "stop_reason": "patience",
        "restored_best": True,
        "early_stopping": True,
        "patience": 1,
        "min_delta": 0.0,
        "max_epochs": 30,
    }
    (fake_run / "logical" / "summary.json").write_text(json.dumps({"curve": curve}))
    cfg = SyntheticConfig(
        image_size=SIZE, n_train=2, n_validation=2, n_test_good=2, n_logical=2, n_structural=2
    )
    generate_dataset(tmp_path / "data", cfg)
    evaluate_run(fake_run, load_dataset(tmp_path / "data"), tmp_path / "eval")
    assert cv2.imread(str(tmp_path / "eval" / "training_curve.png")) is not None
    assert "<img src='training_curve.png'>" in (tmp_path / "eval" / "report.html").read_text()


def test_heat_overlay_keeps_normal_pixels_and_tints_anomalous_ones() -> None:
    from npgmf_edge.visualize import heat_overlay

    image = np.full((10, 10, 3), 100, np.uint8)
    anomaly_map = np.zeros((10, 10), np.float32)
    anomaly_map[5:, :] = 1.0
    picture = heat_overlay(image, anomaly_map, low=0.0, high=1.0)
    assert (picture[:5] == 100).all()
    assert picture[5:, :, 0].min() > 100  # JET at the top of the scale is red


@pytest.mark.parametrize("size", [96, 256, 640])
def test_the_pseudo_anomaly_sheet_writes_each_kind_whole_inside_its_tile(size: int) -> None:
    from npgmf_edge.calibration.pseudo_anomalies import PseudoAnomaly
    from npgmf_edge.visualize import pseudo_anomaly_sheet

    image = np.full((size, size, 3), 128, np.uint8)
    mask = np.zeros((size, size), bool)
    sheet = pseudo_anomaly_sheet([PseudoAnomaly(image, mask, "transplant", 0)])
    tile = sheet[:, :size]
    text = np.argwhere((tile[..., 0] > 200) & (tile[..., 1] > 200) & (tile[..., 2] < 60))  # yellow
    assert len(text) > 0
    assert text[:, 0].min() > 0 and text[:, 1].min() > 0  # not cut at the tile's top or left edge
    box = np.argwhere((tile == 0).all(axis=2))
    assert (box.min(axis=0) < text.min(axis=0)).all() and (text.max(axis=0) < box.max(axis=0)).all()


def test_a_score_that_is_not_finite_is_an_error_never_a_verdict(
    fake_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_maps(run: TrainedRun, device: torch.device):
        return lambda pixels: {
            n: np.full((len(pixels), SIZE, SIZE), np.nan, np.float32) for n in ("structural", "logical")
        }

    monkeypatch.setattr(detector_module, "branch_map_fn", nan_maps)
    summary = predict_images(fake_run, [write_image(tmp_path / "ok.png", False)], tmp_path / "pred")
    (row,) = summary.predictions
    assert (row["verdict"], row["score"], row["overlay"], summary.errors) == ("error", None, "", 1)
    assert row["error"] == "the anomaly score is not a finite number (nan); the model files may be damaged"
