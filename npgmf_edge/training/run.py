"""Train one or both branches into a run directory, then calibrate the fused detector.

The run directory's layout and file names live in `npgmf_edge.rundir`.

Where a dataset has no validation split (MVTec AD, BTAD, plain folders), a seeded fraction
`cfg.train.validation_fraction` of train/good is held out for calibration and not trained on.
"""

from __future__ import annotations

import dataclasses
import os
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
from npgmf_edge.models.structural.torch_model import patch_feature_dim
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

if TYPE_CHECKING:
    from npgmf_edge.training.logical import EpochCallback

BRANCHES = ("logical", "structural", "all")
STRUCTURAL_STRIDE = 8  # the memory bank's patch grid: the finer of the structural levels (strides 8, 16)
MEMORY_HEADROOM = 0.8  # refuse work whose estimate exceeds this share of the memory available now
ADAM_COPIES = 4  # trainable weights, their gradients and Adam's two moments
BACKWARD_FACTOR = 2  # activations kept for the backward pass, and the gradients flowing back through them
PROBE_TEXT_WIDTH = 512  # CLIP ViT-B-32's text embedding: only the text FC's size depends on it


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
    dim = patch_feature_dim(cfg)
    needed = patches * (dim + cfg.structural.coreset_projection_dim) * 4
    available = available_memory()
    if needed > MEMORY_HEADROOM * available:
        raise ConfigError(
            f"the structural memory bank needs about {needed / 2**30:.1f} GiB ({len(dataset.train)} images x "
            f"{grid}x{grid} patches x ({dim} + {cfg.structural.coreset_projection_dim}) "
            f"float32) but {available / 2**30:.1f} GiB of memory is available; train on fewer images or a "
            "smaller --image-size"
        )


def logical_training_bytes(cfg: NpgmfConfig) -> tuple[int, int]:
    """(fixed, per image of a batch) bytes of one logical training step, from the sizes: one batch-1
    forward of a random-init copy of the network, hooks summing the output of every trained leaf module
    (what autograd keeps for the backward pass, counted once more for the gradients flowing back), plus the
    trainable parameters `ADAM_COPIES` times (weights, gradients, Adam's two moments)."""
    from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet

    lg = cfg.logical
    embedding = torch.zeros(PROBE_TEXT_WIDTH) if lg.use_text_prior else None
    net = NpgmfLogicalNet(lg, cfg.image_size, embedding, pretrained=False, weights=None, warn_random=False)
    activations = 0

    def count(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal activations
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                activations += tensor.numel() * tensor.element_size()

    frozen = set(net.encoder.modules())  # runs without autograd: nothing of it is kept for the backward
    leaves = [m for m in net.modules() if not list(m.children()) and m not in frozen]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            net.forward_train(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    finally:
        for hook in hooks:
            hook.remove()
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    return ADAM_COPIES * trainable, BACKWARD_FACTOR * activations


def check_training_memory(
    cfg: NpgmfConfig, dataset: AnomalyDataset, branch: str, device: torch.device
) -> None:
    """Refuse a logical branch whose training step (the batch's activations, gradients and optimiser
    state) plus its cached training images would not fit in memory, before any work starts."""
    if branch not in ("logical", "all"):
        return
    batch = min(cfg.train.batch_size, len(dataset.train))  # batches never exceed the training set
    images = len(dataset.train) + len(dataset.validation)  # validated every epoch: cached too
    cached = images * 3 * cfg.image_size * cfg.image_size * 4  # float32 images, kept in RAM
    fixed, per_image = logical_training_bytes(cfg)
    step = fixed + batch * per_image
    # (bytes needed, bytes available, where): the step runs on the device, the image cache stays in RAM.
    if device.type == "cuda":
        budgets = [
            (step, torch.cuda.mem_get_info(device)[0], f"on {device}"),
            (cached, available_memory(), "in RAM"),
        ]
    else:
        budgets = [(step + cached, available_memory(), "in RAM")]
    for needed, available, where in budgets:
        if needed > MEMORY_HEADROOM * available:
            raise ConfigError(
                f"logical training needs about {_gib(needed)} {where} (a batch of {batch} images at "
                f"{cfg.image_size} px: {_gib(batch * per_image)} of activations, {_gib(fixed)} of weights "
                f"and optimiser state, {_gib(cached)} of cached training images) but {_gib(available)} is "
                "available; lower --batch-size or --image-size, or train on fewer images"
            )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


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
