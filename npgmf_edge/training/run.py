"""Train one or both branches into a run directory, then calibrate the fused detector.

The run directory's layout and file names live in `npgmf_edge.rundir`.

Where a dataset has no validation split (MVTec AD, BTAD, plain folders), a seeded fraction
`cfg.train.validation_fraction` of train/good is held out for calibration and not trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from npgmf_edge.calibration import Calibration
from npgmf_edge.config import FusionConfig, NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import ConfigError, DatasetError
from npgmf_edge.fileio import save_json
from npgmf_edge.rundir import (
    CONFIG_FILE,
    DATASET_FILE,
    LOGICAL_DIR,
    PSEUDO_SAMPLE_FILE,
    RUN_MANIFEST,
    STRUCTURAL_DIR,
    provenance_record,
    write_run_manifest,
)
from npgmf_edge.training.memory import check_memory, check_training_memory

if TYPE_CHECKING:
    from npgmf_edge.training.logical import EpochCallback

BRANCHES = ("logical", "structural", "all")


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
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train the chosen branch(es) of `cfg` on `dataset.train` into `out` on `device` (both branches and
    the calibration, so the validation queries match the memory bank); returns a summary. `on_epoch` is
    called after each epoch of the logical branch (`training.logical.train_logical`)."""
    if branch not in BRANCHES:
        raise ConfigError(f"unknown branch {branch!r}; choose one of: {', '.join(BRANCHES)}")
    device = resolve_device(device)
    cfg.validate()  # every option and the dataset checked before hours of logical training, not after
    dataset = with_validation_split(dataset, cfg.train.validation_fraction, cfg.train.seed)
    check_dataset_size(dataset, branch)
    check_memory(cfg, dataset, branch)
    check_training_memory(cfg, dataset, branch, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MANIFEST).unlink(missing_ok=True)  # the run is changing: rewritten when it is whole again
    if cfg.logical.prompt is None:
        cfg.logical.prompt = dataset.category.replace("_", " ")
    cfg.save(out / CONFIG_FILE)
    images = {"validation_images": [s.image_path for s in dataset.validation],
              "train_images": [s.image_path for s in dataset.train]}  # fmt: skip
    provenance = {
        "format": dataset.format,
        "category": dataset.category,
        "n_train": len(dataset.train),
        **provenance_record(dataset.root, out, images),
    }
    save_json(provenance, out / DATASET_FILE)
    summary: dict[str, Any] = {"run": str(out), "category": dataset.category, "preset": cfg.preset}
    if branch in ("logical", "all"):
        from npgmf_edge.training.logical import train_logical

        summary["logical"] = train_logical(
            dataset, cfg, out / LOGICAL_DIR, resume=resume, device=device, on_epoch=on_epoch
        )
    if branch in ("structural", "all"):
        from npgmf_edge.training.structural import train_structural

        summary["structural"] = train_structural(dataset, cfg, out / STRUCTURAL_DIR, device=device)
    write_run_manifest(out)
    if branch == "all":
        validation = [s.image_path for s in dataset.validation]
        summary["calibration"] = calibrate_run(out, validation, device).to_dict()
        write_run_manifest(out)
    return summary


def calibrate_run(
    run_dir: Path,
    validation_images: Sequence[Path],
    device: str | torch.device = "cpu",
    fusion: FusionConfig | None = None,
) -> Calibration:
    """Branch statistics, the fusion (weights and level, chosen on pseudo-anomalies of the validation
    images as `fusion`, by default the run's, says) and the threshold, from maps computed on `device`;
    saved as calibration.json, with a sample of the pseudo-anomalies as PSEUDO_SAMPLE_FILE."""
    from npgmf_edge.calibration.fusion_choice import choose_fusion
    from npgmf_edge.calibration.pseudo_anomalies import make_pseudo_anomalies
    from npgmf_edge.data import read_image
    from npgmf_edge.detector import RunDetector
    from npgmf_edge.preprocess import to_model_input
    from npgmf_edge.visualize import pseudo_anomaly_sheet, write_png

    detector = RunDetector(run_dir, device=device)
    size, fusion = detector.cfg.image_size, fusion or detector.cfg.fusion
    # Pseudo-anomalies are made at the model's input size: what the detector sees, at a fixed cost.
    images = [
        to_model_input(read_image(path), size).transpose(1, 2, 0).astype(np.uint8)
        for path in validation_images
    ]
    pseudo = make_pseudo_anomalies(images, seed=detector.cfg.train.seed, per_image=fusion.pseudo_per_image)
    normal_maps = detector.image_maps(images, progress=True)
    pseudo_maps = detector.image_maps([p.image for p in pseudo], progress=True)
    calibration = choose_fusion(normal_maps, pseudo_maps, fusion, detector.sigma)
    calibration.save(run_dir)
    write_png(Path(run_dir) / PSEUDO_SAMPLE_FILE, pseudo_anomaly_sheet(pseudo))
    return calibration


def recalibrate_run(run_dir: Path, fusion_weights: str, device: str | torch.device = "cpu") -> Calibration:
    """Calibrate a trained run again on its own validation images (dataset.json), with the fusion chosen
    as `fusion_weights` says ("auto", "paper" or "S:L"); the run's config records the new choice."""
    from npgmf_edge.calibration.fusion_choice import parse_fusion_weights
    from npgmf_edge.rundir import read_provenance

    run_dir = Path(run_dir)
    cfg = NpgmfConfig.load(run_dir / CONFIG_FILE)
    cfg.fusion.mode, cfg.fusion.weight_structural, cfg.fusion.weight_logical = parse_fusion_weights(
        fusion_weights
    )
    validation = [Path(p) for p in read_provenance(run_dir)["validation_images"]]
    if not validation:
        raise DatasetError(f"{run_dir / DATASET_FILE} lists no validation images to calibrate on")
    calibration = calibrate_run(run_dir, validation, device, cfg.fusion)
    cfg.save(run_dir / CONFIG_FILE)
    write_run_manifest(run_dir)
    return calibration
