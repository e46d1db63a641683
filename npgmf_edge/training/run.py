"""Train one or both branches into a run directory, then calibrate the fused detector.

The run directory's layout and file names live in `npgmf_edge.rundir`.

Where a dataset has no validation split (MVTec AD, BTAD, plain folders), a seeded fraction
`cfg.train.validation_fraction` of train/good is held out for calibration and not trained on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import ConfigError, DatasetError
from npgmf_edge.fileio import save_json
from npgmf_edge.rundir import CONFIG_FILE, DATASET_FILE, LOGICAL_DIR, STRUCTURAL_DIR

BRANCHES = ("logical", "structural", "all")


def with_validation_split(dataset: AnomalyDataset, fraction: float, seed: int) -> AnomalyDataset:
    """The dataset itself if it has validation images, else one with a held-out part of train."""
    if dataset.validation:
        return dataset
    n_val = max(1, round(fraction * len(dataset.train)))
    if n_val >= len(dataset.train):
        raise DatasetError(
            f"{dataset.root} has no validation split and {len(dataset.train)} training images: cannot hold "
            f"out a fraction {fraction} for calibration; add a validation split or more good images"
        )
    order = np.random.default_rng(seed).permutation(len(dataset.train))
    held_out = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(dataset.train) if i not in held_out]
    validation = [
        dataclasses.replace(s, split="validation") for i, s in enumerate(dataset.train) if i in held_out
    ]
    return dataclasses.replace(dataset, train=train, validation=validation)


def train_run(
    dataset: AnomalyDataset,
    cfg: NpgmfConfig,
    out: Path,
    *,
    branch: str = "all",
    resume: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the chosen branch(es) of `cfg` on `dataset.train` into `out` on `device` (both branches and
    the calibration, so the validation queries match the memory bank); returns a summary."""
    if branch not in BRANCHES:
        raise ConfigError(f"unknown branch {branch!r}; choose one of: {', '.join(BRANCHES)}")
    device = resolve_device(device)
    if branch in ("structural", "all"):
        cfg.structural.validate()  # fail before hours of logical training, not after
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.logical.prompt is None:
        cfg.logical.prompt = dataset.category.replace("_", " ")
    dataset = with_validation_split(dataset, cfg.train.validation_fraction, cfg.train.seed)
    cfg.save(out / CONFIG_FILE)
    provenance = {
        "root": str(dataset.root),
        "format": dataset.format,
        "category": dataset.category,
        "n_train": len(dataset.train),
        "validation_images": [str(s.image_path) for s in dataset.validation],
        "train_images": [str(s.image_path) for s in dataset.train],
    }
    save_json(provenance, out / DATASET_FILE)
    summary: dict[str, Any] = {"run": str(out), "category": dataset.category, "preset": cfg.preset}
    if branch in ("logical", "all"):
        from npgmf_edge.training.logical import train_logical

        summary["logical"] = train_logical(dataset, cfg, out / LOGICAL_DIR, resume=resume, device=device)
    if branch in ("structural", "all"):
        from npgmf_edge.training.structural import train_structural

        summary["structural"] = train_structural(dataset, cfg, out / STRUCTURAL_DIR, device=device)
    if branch == "all":
        summary["calibration"] = calibrate_run(out, dataset, device)
    return summary


def calibrate_run(
    run_dir: Path, dataset: AnomalyDataset, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Branch statistics and threshold from the validation images (maps computed on `device`); saved as
    calibration.json."""
    from npgmf_edge.calibration import calibrate
    from npgmf_edge.detector import RunDetector

    detector = RunDetector(run_dir, device=device)
    maps = detector.branch_maps([s.image_path for s in dataset.validation], progress=True)
    calibration = calibrate(maps["structural"], maps["logical"], detector.cfg.fusion, detector.sigma)
    calibration.save(run_dir)
    return dataclasses.asdict(calibration)
