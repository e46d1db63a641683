"""`--device auto|cpu|cuda`: resolution, one-line refusals where CUDA is missing, and queries computed on
the device the memory bank was built on."""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from npgmf_edge.cli import main
from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.detector import RunDetector
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import ConfigError
from npgmf_edge.training.run import train_run

NO_TORCH_CUDA = (
    f"error: --device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu or auto\n"
)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["npgmf-edge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown device 'gpu'; choose one of: auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.parametrize("verb", ["train", "evaluate", "predict"])
def test_device_cuda_without_cuda_is_one_line_and_exit_1(
    monkeypatch, capsys, tmp_path: Path, loco_dataset_dir: Path, verb: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = next((loco_dataset_dir / "test" / "good").iterdir())
    args = {
        "train": ["train", str(loco_dataset_dir), "--out", str(tmp_path / "run"), "--preset", "tiny"],
        "evaluate": ["evaluate", str(tmp_path), "--data", str(loco_dataset_dir), "--out", str(tmp_path)],
        "predict": ["predict", str(tmp_path), str(image), "--out", str(tmp_path / "p")],
    }[verb]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--device", "cuda")
    assert (code, out, err) == (1, "", NO_TORCH_CUDA)
    assert not (tmp_path / "run").exists()


def test_device_cuda_on_a_bundle_without_the_cuda_provider_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    (tmp_path / "manifest.json").write_text("{}")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    code, _, err = run_cli(monkeypatch, capsys, "predict", str(tmp_path), str(image), "--device", "cuda")
    assert code == 1
    assert err == (
        "error: --device cuda: onnxruntime here has no CUDA provider (install onnxruntime-gpu); "
        "use --device cpu or auto\n"
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_training_images_score_zero_against_the_whole_bank_on_the_same_device(
    loco_dataset_dir: Path, tmp_path: Path, device: str
) -> None:
    """With every training patch kept, a training image queried on the bank's device finds itself."""
    dataset = load_dataset(loco_dataset_dir)
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.image_size = 64
    cfg.structural.coreset_sampler = "identity"
    train_run(dataset, cfg, tmp_path / "run", branch="structural", device=device)
    detector = RunDetector(tmp_path / "run", device=device)
    train_maps = detector.branch_maps([s.image_path for s in dataset.train])["structural"]
    test_maps = detector.branch_maps([s.image_path for s in dataset.test])["structural"]
    assert float(np.abs(train_maps).max()) < 1e-4 * float(np.median(test_maps.max(axis=(1, 2))))


def test_querying_on_another_device_than_the_bank_warns(loco_dataset_dir, tmp_path, caplog) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.image_size = 64
    train_run(dataset, cfg, tmp_path / "run", branch="structural", device="cpu")
    summary_path = tmp_path / "run" / "structural" / "summary.json"
    assert json.loads(summary_path.read_text())["device"] == "cpu"
    RunDetector(tmp_path / "run", device="cpu")
    assert "memory bank was built on" not in caplog.text
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "device": "cuda"}))
    RunDetector(tmp_path / "run", device="cpu")
    assert "the memory bank was built on cuda, queries run on cpu" in caplog.text


@pytest.mark.gpu
def test_both_branches_train_calibrate_and_query_on_cuda(loco_dataset_dir, tmp_path) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = get_preset("tiny")
    cfg.weights.pretrained = False
    cfg.image_size = 64
    cfg.train.epochs = 1
    summary = train_run(dataset, cfg, tmp_path / "run", branch="all", device="cuda")
    assert summary["logical"]["device"] == summary["structural"]["device"] == "cuda"
    inspections = RunDetector(tmp_path / "run", device="cuda").inspect([s.image_path for s in dataset.test])
    assert all(np.isfinite(i.score) for i in inspections)
