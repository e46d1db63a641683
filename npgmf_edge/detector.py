"""A trained run directory as one torch-side detector: branch maps, fusion and verdict.

This is what `evaluate`, `predict` and calibration use on a run. It runs the run's `InspectionNet` (the
encoder once per image), searches the coreset with the run's kNN scorer and fuses the two maps; the
deployment runtime reproduces the same numbers from a bundle without torch (the manifest is the contract).

Example:
    >>> detector = RunDetector(Path("runs/tray"))
    >>> maps = detector.branch_maps([Path("img.png")])   # {"structural": (1,S,S), "logical": (1,S,S)}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from npgmf_edge.calibration.calibrate import CALIBRATION_FILE
from npgmf_edge.data import DEFAULT_MAX_PIXELS, decode_inputs, read_image
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import CheckpointError
from npgmf_edge.inspection import (
    BRANCH_NAMES,
    ImageInput,
    Inspection,
    batched_maps,
    concat_batches,
    scored_maps,
)
from npgmf_edge.postprocess import gaussian_sigma_for, structural_maps
from npgmf_edge.preprocess import map_to_image_size
from npgmf_edge.rundir import TrainedRun, bank_built_on, load_run

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8

BranchMapFn = Callable[[torch.Tensor], dict[str, np.ndarray]]


def branch_map_fn(run: TrainedRun, device: torch.device) -> BranchMapFn:
    """pixels (B, 3, S, S) -> {branch: raw (B, S, S) float32 map} for the branches the run has; the network
    runs on `device`, the kNN search on the CPU."""
    net, scorer = run.net.to(device), run.scorer

    @torch.no_grad()
    def maps(pixels: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = {
            name: out.cpu() for name, out in zip(net.output_names, net(pixels.to(device)), strict=True)
        }
        result: dict[str, np.ndarray] = {}
        if "patch_features" in outputs:
            features = outputs["patch_features"].numpy()
            result["structural"] = structural_maps(features, scorer, pixels.shape[-1])
        if "logical_map" in outputs:
            result["logical"] = outputs["logical_map"][:, 0].float().numpy()
        return result

    return maps


class RunDetector:
    """Loads whichever branches a run has; fuses them when the run is calibrated. The network runs on
    `device` ("auto", "cpu", "cuda"); a warning says when that is not where the memory bank was built.
    An `inspection.MapDetector`."""

    def __init__(
        self, run_dir: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, device: str | torch.device = "cpu"
    ) -> None:
        self.device = resolve_device(device)  # before loading: a bad --device fails at once
        run = load_run(Path(run_dir))
        self.max_pixels = max_pixels
        self.run_dir = run.run_dir
        self.cfg = run.cfg
        self.calibration = run.calibration
        bank_device = bank_built_on(self.run_dir)
        if bank_device not in (None, self.device.type):
            log.warning(
                "%s: the memory bank was built on %s, queries run on %s; patch features differ between "
                "devices by float rounding, so pass --device %s for the run's own numbers",
                self.run_dir,
                bank_device,
                self.device.type,
                bank_device,
            )
        self.branch_fn = branch_map_fn(run, self.device)
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
        """`branch_maps` plus each image's original (height, width), from one decode per image; an
        unreadable image is a DatasetError (a dataset must be whole to be measured)."""
        return self._maps((read_image(p) for p in image_paths), len(image_paths), batch_size, progress)

    @torch.no_grad()
    def image_maps(self, images: Sequence[np.ndarray], progress: bool = False) -> dict[str, np.ndarray]:
        """`branch_maps` of RGB uint8 images already in memory (calibration's pseudo-anomalies)."""
        return self._maps(iter(images), len(images), DEFAULT_BATCH, progress)[0]

    def _maps(
        self, images: Iterable[np.ndarray], total: int, batch_size: int, progress: bool
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        def run(pixels: np.ndarray) -> dict[str, np.ndarray]:
            return self.branch_fn(torch.from_numpy(pixels))

        return batched_maps(images, total, batch_size, self.cfg.image_size, run, progress)

    @torch.no_grad()
    def maps(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, S, S) float32 pixels -> raw branch maps, and the fused map and score when calibrated."""
        step = DEFAULT_BATCH
        return self._post(
            concat_batches(
                self.branch_fn(torch.from_numpy(pixels[i : i + step])) for i in range(0, len(pixels), step)
            )
        )

    def _post(self, branch_maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The branch maps, with the fused map and image score when the run is calibrated."""
        if self.calibration is None or set(branch_maps) != set(BRANCH_NAMES):
            return branch_maps
        fused, score = self.calibration.post(branch_maps["structural"], branch_maps["logical"])
        return {**branch_maps, "fused": fused, "score": score}

    def answered_by(self) -> dict[str, str | None]:
        return {}  # a run has one graph: its own

    def close(self) -> None:
        """Nothing to release: the network and the memory bank go with the object."""

    def scored_maps(
        self, branch_maps: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Smoothed per-branch maps plus the fused map (when calibrated), and their image scores (a branch's:
        max of its map; the fused one's: the calibration's post stage): what evaluation scores."""
        return scored_maps(self._post(branch_maps), self.sigma)

    def inspect(self, images: Sequence[ImageInput], progress: bool = False) -> list[Inspection]:
        """Fused score, verdict and original-resolution map for each image (paths or RGB uint8 arrays;
        needs a calibrated run). An image that cannot be read gets an `Inspection` with its `error` and no
        verdict; the others are inspected as usual."""
        if self.calibration is None:
            raise CheckpointError(
                f"{self.run_dir} is not calibrated ({CALIBRATION_FILE} missing): train with --branch all"
            )
        threshold = self.calibration.threshold
        decoded = decode_inputs(images, self.max_pixels)
        good = [image for image in decoded if not isinstance(image, str)]
        if not good:
            return [Inspection.failed(threshold, reason) for reason in decoded]
        maps, sizes = self._maps(good, len(good), DEFAULT_BATCH, progress)
        fused, scores = self.calibration.post(maps["structural"], maps["logical"])
        inspected = iter(zip(fused, scores, sizes, strict=True))
        results = []
        for item in decoded:
            if isinstance(item, str):
                results.append(Inspection.failed(threshold, item))
                continue
            anomaly_map, score, (height, width) = next(inspected)
            results.append(Inspection(float(score), threshold, map_to_image_size(anomaly_map, height, width)))
        return results
