"""A trained run directory as one torch-side detector: branch maps, fusion and verdict.

This is what `evaluate` and `predict` use before export; the deployment runtime reproduces the same
numbers from the bundle without torch (the manifest is the contract).

Example:
    >>> detector = RunDetector(Path("runs/tray"))
    >>> maps = detector.branch_maps([Path("img.png")])   # {"structural": (1,S,S), "logical": (1,S,S)}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from npgmf_edge.calibration import Calibration, load_calibration
from npgmf_edge.calibration.calibrate import CALIBRATION_FILE
from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import read_image
from npgmf_edge.errors import CheckpointError
from npgmf_edge.inspection import Inspection
from npgmf_edge.postprocess import gaussian_sigma_for, image_scores, smooth
from npgmf_edge.preprocess import map_to_image_size, to_model_input

BRANCH_NAMES = ("structural", "logical")
DEFAULT_BATCH = 8

MapFn = Callable[[torch.Tensor], torch.Tensor]


def _load_branch(run_dir: Path, name: str) -> MapFn | None:
    """The branch's map function (pixels -> (B,1,S,S)), or None when that branch was not trained."""
    branch_dir = run_dir / name
    if not branch_dir.is_dir():
        return None
    if name == "logical":
        from npgmf_edge.training.logical import load_logical

        return load_logical(branch_dir)
    from npgmf_edge.training.structural import load_structural

    return load_structural(branch_dir).anomaly_map


class RunDetector:
    """Loads whichever branches a run has; fuses them when the run is calibrated."""

    def __init__(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{run_dir} is not a run directory: {config_path} is missing")
        self.run_dir = run_dir
        self.cfg = NpgmfConfig.load(config_path)
        self.branches: dict[str, MapFn] = {}
        for name in BRANCH_NAMES:
            fn = _load_branch(run_dir, name)
            if fn is not None:
                self.branches[name] = fn
        if not self.branches:
            raise CheckpointError(f"{run_dir} holds no trained branch (no logical/ or structural/ folder)")
        self.calibration: Calibration | None = (
            load_calibration(run_dir) if (run_dir / CALIBRATION_FILE).is_file() else None
        )
        self.sigma = gaussian_sigma_for(self.cfg.image_size, self.cfg.fusion.gaussian_sigma)

    def branch_maps(
        self, image_paths: Sequence[Path], batch_size: int = DEFAULT_BATCH, progress: bool = False
    ) -> dict[str, np.ndarray]:
        """Raw (unsmoothed) (N, S, S) maps of each branch at the model's input size."""
        return self.maps_and_sizes(image_paths, batch_size, progress)[0]

    @torch.no_grad()
    def maps_and_sizes(
        self, image_paths: Sequence[Path], batch_size: int = DEFAULT_BATCH, progress: bool = False
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        """`branch_maps` plus each image's original (height, width), from one decode per image."""
        size = self.cfg.image_size
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.branches}
        sizes: list[tuple[int, int]] = []
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("computing anomaly maps", total=len(image_paths))
            for start in range(0, len(image_paths), batch_size):
                images = [read_image(p) for p in image_paths[start : start + batch_size]]
                sizes.extend(image.shape[:2] for image in images)
                pixels = torch.from_numpy(np.stack([to_model_input(image, size) for image in images]))
                for name, fn in self.branches.items():
                    out[name].append(fn(pixels)[:, 0].float().numpy())
                bar.advance(task, len(images))
        empty = np.zeros((0, size, size), np.float32)
        return {name: np.concatenate(maps) if maps else empty for name, maps in out.items()}, sizes

    def scored_maps(self, branch_maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Smoothed per-branch maps plus the fused map (when calibrated): what evaluation scores."""
        scored = {name: smooth(maps, self.sigma) for name, maps in branch_maps.items()}
        if self.calibration is not None and len(branch_maps) == len(BRANCH_NAMES):
            scored["fused"] = self.calibration.fuse(branch_maps["structural"], branch_maps["logical"])
        return scored

    def inspect(self, image_paths: Sequence[Path], progress: bool = False) -> list[Inspection]:
        """Fused score, verdict and original-resolution map for each image (needs a calibrated run)."""
        if self.calibration is None:
            raise CheckpointError(
                f"{self.run_dir} is not calibrated ({CALIBRATION_FILE} missing): train with --branch all"
            )
        maps, sizes = self.maps_and_sizes(image_paths, progress=progress)
        fused = self.scored_maps(maps)["fused"]
        scores = image_scores(fused)
        results = []
        for anomaly_map, score, (height, width) in zip(fused, scores, sizes, strict=True):
            results.append(
                Inspection(
                    score=float(score),
                    threshold=self.calibration.threshold,
                    anomaly_map=map_to_image_size(anomaly_map, height, width),
                )
            )
        return results
