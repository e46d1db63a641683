"""Fit the structural branch (PatchCore): memory bank of training patch features -> coreset -> kNN index.

Nothing is learned by gradient descent: the frozen encoder's patch features of every good training image
form the memory bank, greedy k-center selection keeps `coreset_ratio` of it, and the kept patches are
indexed for nearest-neighbour search. Writes `out_dir` (normally `<run>/structural/`, laid out in
`rundir`; nothing pickled): the config, the encoder's weights, the coreset as .npy and as a FAISS index,
and summary.json (bank and coreset sizes, feature grid, seconds).

Example:
    >>> summary = train_structural(load_dataset(Path("data")), get_preset("tiny"), Path("runs/x/structural"))
    >>> detector = npgmf_edge.rundir.load_structural(Path("runs/x/structural"))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from npgmf_edge.config import NpgmfConfig, StructuralConfig
from npgmf_edge.data import AnomalyDataset, Sample
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import DatasetError
from npgmf_edge.fileio import save_json, save_tensors
from npgmf_edge.knn import BruteForceNN, FaissNN, create_scorer
from npgmf_edge.models.structural.features import PatchFeatureExtractor
from npgmf_edge.models.structural.sampler import (
    BaseSampler,
    GreedyCoresetSampler,
    IdentitySampler,
    RandomSampler,
)
from npgmf_edge.models.structural.torch_model import build_patch_extractor
from npgmf_edge.progress import Reporter
from npgmf_edge.rundir import CONFIG_FILE, CORESET_FAISS, CORESET_NPY, EXTRACTOR_FILE, SUMMARY_FILE
from npgmf_edge.training.images import ImageTensorDataset

MIN_TRAIN_IMAGES = 2


def make_sampler(cfg: StructuralConfig, seed: int, progress: bool = False) -> BaseSampler:
    """The sampler a structural config names (ratio validated: ConfigError outside (0, 1])."""
    if cfg.coreset_sampler == "identity":
        return IdentitySampler()
    if cfg.coreset_sampler == "random":
        return RandomSampler(cfg.coreset_ratio, seed=seed)
    return GreedyCoresetSampler(
        cfg.coreset_ratio, projection_dim=cfg.coreset_projection_dim, seed=seed, progress=progress
    )


@torch.no_grad()
def extract_memory_bank(
    extractor: PatchFeatureExtractor,
    samples: Sequence[Sample],
    image_size: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """All patch features of `samples` as an (N_images * h * w, D) float32 bank on the extractor's device."""
    device = next(extractor.parameters()).device
    loader = DataLoader(ImageTensorDataset(samples, image_size), batch_size=batch_size, shuffle=False)
    chunks: list[torch.Tensor] = []
    grid = (0, 0)
    with Reporter("patch features", len(loader), unit="batches", enabled=progress) as report:
        for pixels in loader:
            features = extractor(pixels.to(device))
            grid = (int(features.shape[-2]), int(features.shape[-1]))
            chunks.append(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
            report.advance()
    return torch.cat(chunks), grid


def train_structural(
    dataset: AnomalyDataset,
    cfg: NpgmfConfig,
    out_dir: Path,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Build the memory bank from `dataset.train` on `device`, select the coreset there, write `out_dir`;
    returns a summary. Query the run on the same device: features differ across devices by rounding."""
    started = time.perf_counter()
    cfg.structural.validate()
    samples = list(dataset.train)
    if len(samples) < MIN_TRAIN_IMAGES:
        raise DatasetError(
            f"the structural branch needs at least {MIN_TRAIN_IMAGES} good training images, got "
            f"{len(samples)} in {dataset.root} ({dataset.category}); add good images to the training set"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    torch.manual_seed(cfg.train.seed)

    extractor = build_patch_extractor(cfg).to(device)
    bank, grid = extract_memory_bank(extractor, samples, cfg.image_size, cfg.structural.batch_size, progress)
    seconds_features = time.perf_counter() - started

    tick = time.perf_counter()
    sampler = make_sampler(cfg.structural, cfg.train.seed, progress)
    coreset = sampler.run(bank).float().cpu().numpy()
    seconds_coreset = time.perf_counter() - tick
    bank_size = len(bank)
    del bank

    backend = cfg.structural.knn_backend
    scorer = create_scorer(backend).fit(coreset)
    cfg.save(out_dir / CONFIG_FILE)
    meta = {"image_size": cfg.image_size, "feature_grid": list(grid), "embed_dim": int(coreset.shape[1])}
    save_tensors(extractor.state_dict(), out_dir / EXTRACTOR_FILE, meta)
    BruteForceNN().fit(coreset).save(out_dir / CORESET_NPY)
    faiss_index = scorer if isinstance(scorer, FaissNN) else FaissNN(on_gpu=False).fit(coreset)
    faiss_index.save(out_dir / CORESET_FAISS)
    summary = {
        "images": len(samples),
        "feature_grid": list(grid),
        "embed_dim": int(coreset.shape[1]),
        "aggregation": cfg.structural.aggregation,
        "bank_size": bank_size,
        "coreset_size": len(coreset),
        "coreset_sampler": cfg.structural.coreset_sampler,
        "coreset_ratio": cfg.structural.coreset_ratio,
        "knn_backend": backend,
        "shared_encoder": cfg.structural.share_logical_encoder,
        "device": device.type,
        "seconds_features": round(seconds_features, 3),
        "seconds_coreset": round(seconds_coreset, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    save_json(summary, out_dir / SUMMARY_FILE)
    return summary
