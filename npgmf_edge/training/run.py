"""Train one or both branches into a run directory, then calibrate the fused detector.

The run directory's layout and file names live in `npgmf_edge.rundir`.

Where a dataset has no validation split (MVTec AD, BTAD, plain folders), a seeded fraction
`cfg.train.validation_fraction` of train/good is held out for calibration and not trained on.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import ConfigError, DatasetError
from npgmf_edge.fileio import save_json
from npgmf_edge.rundir import (
    CONFIG_FILE,
    DATASET_FILE,
    LOGICAL_DIR,
    RUN_MANIFEST,
    STRUCTURAL_DIR,
    write_run_manifest,
)

BRANCHES = ("logical", "structural", "all")
STRUCTURAL_STRIDE = 8  # the memory bank's patch grid: the finer of the structural levels (strides 8, 16)
MEMORY_HEADROOM = 0.8  # refuse work whose estimate exceeds this share of the memory available now


def available_memory() -> int:
    """Bytes the kernel says are available now (MemAvailable, counting reclaimable cache; else free pages)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_dataset_size(dataset: AnomalyDataset, branch: str) -> None:
    """Every branch to train has the images it needs, checked before the first branch starts."""
    from npgmf_edge.training.structural import MIN_TRAIN_IMAGES

    for name, needed in (("logical", 1), ("structural", MIN_TRAIN_IMAGES)):
        if branch in (name, "all") and len(dataset.train) < needed:
            raise DatasetError(
                f"the {name} branch needs at least {needed} good training images, got {len(dataset.train)} "
                f"in {dataset.root} ({dataset.category}); add good images to the training set"
            )
    if branch == "all" and not dataset.validation:
        raise DatasetError(f"{dataset.root} has no validation images to calibrate the verdict threshold on")


def check_memory(cfg: NpgmfConfig, dataset: AnomalyDataset, branch: str) -> None:
    """Refuse a structural branch whose memory bank (every training patch, D float32 values each, plus its
    projection for the coreset search) would not fit in the memory available, before any work starts."""
    if branch not in ("structural", "all"):
        return
    grid = cfg.image_size // STRUCTURAL_STRIDE
    patches = len(dataset.train) * grid * grid
    needed = patches * (cfg.structural.embed_dim + cfg.structural.coreset_projection_dim) * 4
    available = available_memory()
    if needed > MEMORY_HEADROOM * available:
        raise ConfigError(
            f"the structural memory bank needs about {needed / 2**30:.1f} GiB ({len(dataset.train)} images x "
            f"{grid}x{grid} patches x ({cfg.structural.embed_dim} + {cfg.structural.coreset_projection_dim}) "
            f"float32) but {available / 2**30:.1f} GiB of memory is available; train on fewer images or a "
            "smaller --image-size"
        )


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
    cfg.validate()  # every option and the dataset checked before hours of logical training, not after
    dataset = with_validation_split(dataset, cfg.train.validation_fraction, cfg.train.seed)
    check_dataset_size(dataset, branch)
    check_memory(cfg, dataset, branch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MANIFEST).unlink(missing_ok=True)  # the run is changing: rewritten when it is whole again
    if cfg.logical.prompt is None:
        cfg.logical.prompt = dataset.category.replace("_", " ")
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
    write_run_manifest(out)
    if branch == "all":
        summary["calibration"] = calibrate_run(out, dataset, device)
        write_run_manifest(out)
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
