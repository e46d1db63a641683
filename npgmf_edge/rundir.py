"""The run directory: the one place that knows its file names, and the loading of a trained run.

Training writes through these names; the detector, calibration and export read through `load_run`.

    config.json              the full NpgmfConfig
    dataset.json             the data root (relative to the run and absolute: a run moved with its data, or
                             alone, still finds it, `read_provenance`) and the training and validation images
    logical/                 config.json, checkpoint.safetensors (resumable), model.safetensors, summary.json
    structural/              config.json, extractor.safetensors, coreset.npy, coreset.faiss, summary.json
    calibration.json         branch statistics, the chosen fusion and verdict threshold (--branch all)
    pseudo_anomalies.png     a sample of the validation pseudo-anomalies the fusion was chosen on
    run_manifest.json        SHA-256 of every config, weight, coreset and calibration file (RUN_FILES)

`load_run` checks every file against run_manifest.json first (a flipped byte is a CheckpointError naming
the file, not a detector scoring NaN). Nothing is pickled or downloaded at load.

Example:
    >>> run = load_run(Path("runs/tray"))
    >>> logical_map, patch_features = run.net(pixels)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npgmf_edge.calibration import Calibration, load_calibration
from npgmf_edge.calibration.calibrate import CALIBRATION_FILE, PSEUDO_SAMPLE_FILE
from npgmf_edge.config import NpgmfConfig
from npgmf_edge.errors import CheckpointError
from npgmf_edge.fileio import check_hashes, load_json, load_tensors, save_json, sha256_file
from npgmf_edge.knn import BruteForceNN, NearestNeighbourScorer, create_scorer
from npgmf_edge.models.inspection_net import InspectionNet
from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet
from npgmf_edge.models.structural.features import PatchFeatureExtractor
from npgmf_edge.models.structural.torch_model import StructuralDetector, build_patch_extractor
from npgmf_edge.runtime.manifest import CORESET_FAISS, CORESET_NPY

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
LOGICAL_DIR = "logical"
STRUCTURAL_DIR = "structural"
SUMMARY_FILE = "summary.json"
# logical/
CHECKPOINT_FILE = "checkpoint.safetensors"
MODEL_FILE = "model.safetensors"
TEXT_EMBEDDING_KEY = "text_prior.embedding"
# structural/
EXTRACTOR_FILE = "extractor.safetensors"
RUN_MANIFEST = "run_manifest.json"
# What a trained run is made of, relative to the run directory (not the resumable checkpoint or summaries).
RUN_FILES = (
    CONFIG_FILE,
    CALIBRATION_FILE,
    f"{LOGICAL_DIR}/{CONFIG_FILE}",
    f"{LOGICAL_DIR}/{MODEL_FILE}",
    f"{STRUCTURAL_DIR}/{CONFIG_FILE}",
    f"{STRUCTURAL_DIR}/{EXTRACTOR_FILE}",
    f"{STRUCTURAL_DIR}/{CORESET_NPY}",
    f"{STRUCTURAL_DIR}/{CORESET_FAISS}",
)
_warned_unchecked: set[Path] = set()

__all__ = ["CALIBRATION_FILE", "PSEUDO_SAMPLE_FILE", "TrainedRun", "load_run"]


def write_run_manifest(run_dir: Path) -> Path:
    """Record the SHA-256 of every run file present; training calls this whenever it has changed them."""
    run_dir = Path(run_dir)
    files = {name: sha256_file(run_dir / name) for name in RUN_FILES if (run_dir / name).is_file()}
    return save_json({"files": files}, run_dir / RUN_MANIFEST)


def check_run_files(run_dir: Path) -> None:
    """Every file recorded in run_manifest.json is present and unchanged, else CheckpointError naming it.
    A run without a manifest (trained by an older version) is loaded after one warning."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_MANIFEST
    if not path.is_file():
        if run_dir not in _warned_unchecked:
            _warned_unchecked.add(run_dir)
            log.warning(
                "%s has no %s (an older run): its files cannot be checked for damage", run_dir, RUN_MANIFEST
            )
        return
    recorded = load_json(path)
    files = recorded.get("files") if isinstance(recorded, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"{path} is damaged (no file list); retrain the run with `npgmf-edge train`")
    check_hashes(run_dir, files, path, CheckpointError, ("run", "training", "retrain", "train"))


def build_logical_from_state(
    cfg: NpgmfConfig, state: dict[str, torch.Tensor], where: Path
) -> NpgmfLogicalNet:
    """The logical network with weights from `state`: no hub, no CLIP (the embedding is in `state`)."""
    net = NpgmfLogicalNet(
        cfg.logical,
        cfg.image_size,
        state.get(TEXT_EMBEDDING_KEY),
        pretrained=False,
        weights=None,
        warn_random=False,
    )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where} does not fit the network in its config: {exc}") from exc
    return net


def load_logical(branch_dir: Path) -> NpgmfLogicalNet:
    """The trained logical network from `branch_dir` (config.json + model.safetensors), eval mode, CPU."""
    branch_dir = Path(branch_dir)
    config_path, model_path = branch_dir / CONFIG_FILE, branch_dir / MODEL_FILE
    if not config_path.is_file() or not model_path.is_file():
        raise CheckpointError(
            f"{branch_dir} holds no trained logical branch ({CONFIG_FILE} and {MODEL_FILE} are needed); "
            "train it with `npgmf-edge train --branch logical`, or resume an interrupted run with --resume"
        )
    cfg = NpgmfConfig.load(config_path)
    state, _ = load_tensors(model_path)
    return build_logical_from_state(cfg, state, model_path).eval()


def _check_structural_files(branch_dir: Path) -> None:
    for name in (CONFIG_FILE, EXTRACTOR_FILE, CORESET_NPY, CORESET_FAISS):
        if not (branch_dir / name).is_file():
            raise CheckpointError(
                f"{branch_dir / name} is missing: {branch_dir} is not a complete structural branch folder; "
                "train it with `npgmf-edge train --branch structural`"
            )


def load_patch_extractor(branch_dir: Path) -> PatchFeatureExtractor:
    """The structural branch's frozen feature extractor, weights from extractor.safetensors."""
    branch_dir = Path(branch_dir)
    _check_structural_files(branch_dir)
    cfg = NpgmfConfig.load(branch_dir / CONFIG_FILE)
    extractor = build_patch_extractor(cfg, weights_follow=True)
    tensors, _ = load_tensors(branch_dir / EXTRACTOR_FILE)
    missing, unexpected = extractor.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{branch_dir / EXTRACTOR_FILE} does not match the extractor in {branch_dir / CONFIG_FILE} "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    return extractor.eval()


def load_scorer(branch_dir: Path, knn_backend: str | None = None) -> NearestNeighbourScorer:
    """The fitted kNN scorer over the coreset ("faiss"/"faiss_ivf" read coreset.faiss, "brute" the .npy)."""
    branch_dir = Path(branch_dir)
    _check_structural_files(branch_dir)
    backend = knn_backend or NpgmfConfig.load(branch_dir / CONFIG_FILE).structural.knn_backend
    scorer_type = type(create_scorer(backend))  # ConfigError naming the choices if unknown
    if scorer_type is BruteForceNN:
        return BruteForceNN.load(branch_dir / CORESET_NPY)
    return scorer_type.load(branch_dir / CORESET_FAISS)


def load_structural(
    branch_dir: Path, *, knn_backend: str | None = None, device: str | torch.device = "cpu"
) -> StructuralDetector:
    """The structural branch alone (extractor + scorer), as written by `train_structural`."""
    return StructuralDetector(load_patch_extractor(branch_dir), load_scorer(branch_dir, knn_backend)).to(
        device
    )


def load_coreset(run_dir: Path) -> np.ndarray:
    """The (M, D) float32 coreset of a run's structural branch."""
    path = Path(run_dir) / STRUCTURAL_DIR / CORESET_NPY
    _check_structural_files(path.parent)
    return np.load(path, allow_pickle=False)


def bank_built_on(run_dir: Path) -> str | None:
    """The device type ("cpu", "cuda") the run's memory bank was built on; None without one."""
    path = Path(run_dir) / STRUCTURAL_DIR / SUMMARY_FILE
    return str(load_json(path)["device"]).split(":")[0] if path.is_file() else None


IMAGE_LISTS = ("validation_images", "train_images")
RELATIVE_TO_ROOT = "relative to the data root"  # dataset.json's "image_paths" since issue 24


def provenance_record(root: Path, run_dir: Path, lists: dict[str, list[Path]]) -> dict[str, Any]:
    """dataset.json's paths: the data root relative to the run directory and absolute, and each image list
    relative to the root, so `read_provenance` finds them after the run moves, with its data or alone."""
    root = Path(root).absolute()
    return {
        "root": str(root),
        "root_from_run": _relative(root, Path(run_dir).absolute()),
        "image_paths": RELATIVE_TO_ROOT,
        **{key: [_relative(Path(p).absolute(), root) for p in paths] for key, paths in lists.items()},
    }


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(path)


def read_provenance(run_dir: Path) -> dict[str, Any]:
    """dataset.json: the data root, format, category and the training and validation images of the run,
    the images as paths that exist here (CheckpointError naming the fix when the data cannot be found).
    The root is looked for relative to the run, then absolute; for runs from before issue 24 (paths as
    given to `train`) relative to the current folder, then to each folder above the run."""
    run_dir = Path(run_dir)
    data = load_json(run_dir / DATASET_FILE)
    recorded = Path(data["root"])
    if data.get("image_paths") == RELATIVE_TO_ROOT:
        relative = {key: [Path(p) for p in data.get(key, [])] for key in IMAGE_LISTS}
        candidates = [run_dir / data["root_from_run"], recorded]
    else:
        relative = {
            key: [Path(os.path.relpath(p, recorded)) for p in data.get(key, [])] for key in IMAGE_LISTS
        }
        above = [] if recorded.is_absolute() else [folder / recorded for folder in run_dir.absolute().parents]
        candidates = [recorded, *above]
    probe = next((paths[0] for paths in relative.values() if paths), None)
    root = next((c for c in candidates if c.is_dir() and (probe is None or (c / probe).is_file())), None)
    if root is None:
        raise CheckpointError(
            f"{run_dir}: the data it was trained on ({recorded}) is found neither beside the run nor where "
            "it was; move the dataset back, or run from the folder the run was trained in"
        )
    return {**data, "root": str(root), **{k: [str(root / p) for p in v] for k, v in relative.items()}}


@dataclass
class TrainedRun:
    """A loaded run: its config, the inference network, the kNN scorer and the calibration."""

    run_dir: Path
    cfg: NpgmfConfig
    net: InspectionNet
    scorer: NearestNeighbourScorer | None
    calibration: Calibration | None


def _same_encoder(logical: NpgmfLogicalNet, extractor: PatchFeatureExtractor) -> bool:
    a, b = logical.encoder.state_dict(), extractor.encoder.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_run(run_dir: Path, *, knn_backend: str | None = None) -> TrainedRun:
    """Load whichever branches `run_dir` has into one `InspectionNet` (encoder shared where the preset
    says so), the kNN scorer and, when present, the calibration."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: {config_path} is missing")
    check_run_files(run_dir)
    cfg = NpgmfConfig.load(config_path)
    logical_dir, structural_dir = run_dir / LOGICAL_DIR, run_dir / STRUCTURAL_DIR
    logical = load_logical(logical_dir) if logical_dir.is_dir() else None
    extractor = load_patch_extractor(structural_dir) if structural_dir.is_dir() else None
    if logical is None and extractor is None:
        raise CheckpointError(f"{run_dir} holds no trained branch (no logical/ or structural/ folder)")
    share = cfg.structural.share_logical_encoder and logical is not None and extractor is not None
    if share and not _same_encoder(logical, extractor):
        raise CheckpointError(
            f"{run_dir}: the branches were trained with different encoder weights although the preset "
            "shares one encoder; retrain the run with --branch all"
        )
    scorer = load_scorer(structural_dir, knn_backend) if extractor is not None else None
    calibration = load_calibration(run_dir) if (run_dir / CALIBRATION_FILE).is_file() else None
    net = InspectionNet(logical, extractor, share_encoder=share)
    return TrainedRun(run_dir, cfg, net, scorer, calibration)
