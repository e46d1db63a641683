"""Fit the fusion statistics (Eq. 11) and the verdict threshold on normal validation images.

Writes `calibration.json` into the run directory; export copies it into the bundle manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.calibration.threshold import threshold_for_false_alarm_rate
from npgmf_edge.config import FusionConfig
from npgmf_edge.errors import CheckpointError, ConfigError
from npgmf_edge.fileio import save_json
from npgmf_edge.postprocess import BranchStats, fuse, image_scores

CALIBRATION_FILE = "calibration.json"
MIN_STD = 1e-8  # a constant branch map (e.g. an untrained branch) must not divide by zero


@dataclass(frozen=True)
class Calibration:
    """Everything fusion and the verdict need besides the two branch maps."""

    structural: BranchStats
    logical: BranchStats
    weight_structural: float
    weight_logical: float
    gaussian_sigma: float  # in pixels at the model's input size
    threshold: float
    false_alarm_rate: float
    n_validation_images: int

    def fuse(self, structural: np.ndarray, logical: np.ndarray) -> np.ndarray:
        return fuse(
            structural,
            logical,
            self.structural,
            self.logical,
            self.weight_structural,
            self.weight_logical,
            self.gaussian_sigma,
        )

    def save(self, run_dir: Path) -> Path:
        return save_json(asdict(self), Path(run_dir) / CALIBRATION_FILE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of `to_dict`; ValueError naming the key when one is missing, unknown, or not a finite
        number (a string threshold must not reach a comparison). Callers name the file."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise ValueError(f"missing keys {missing}, unknown keys {unknown}")
        values = dict(data)
        for branch in ("structural", "logical"):
            stats = data[branch]
            if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
                raise ValueError(f"{branch} must hold exactly mean and std, got {stats!r}")
            values[branch] = BranchStats(
                _finite(f"{branch}.mean", stats["mean"]), _finite(f"{branch}.std", stats["std"])
            )
        for name in names - {"structural", "logical"}:
            values[name] = _finite(name, data[name])
        values["n_validation_images"] = int(values["n_validation_images"])
        return cls(**values)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def branch_stats(maps: np.ndarray) -> BranchStats:
    """Mean and std over every pixel of every normal validation map of one branch."""
    values = np.asarray(maps, dtype=np.float64)
    return BranchStats(mean=float(values.mean()), std=max(float(values.std()), MIN_STD))


def calibrate(
    structural_maps: np.ndarray, logical_maps: np.ndarray, fusion: FusionConfig, sigma: float
) -> Calibration:
    """Calibration from (N, H, W) branch maps of N normal validation images (N >= 1)."""
    if structural_maps.shape != logical_maps.shape or structural_maps.ndim != 3:
        raise ConfigError(
            f"branch maps must be (N, H, W) and equal: {structural_maps.shape} vs {logical_maps.shape}"
        )
    if structural_maps.shape[0] == 0:
        raise ConfigError("calibration needs at least one normal validation image")
    stats_s, stats_l = branch_stats(structural_maps), branch_stats(logical_maps)
    fused = fuse(
        structural_maps,
        logical_maps,
        stats_s,
        stats_l,
        fusion.weight_structural,
        fusion.weight_logical,
        sigma,
    )
    threshold = threshold_for_false_alarm_rate(image_scores(fused), fusion.false_alarm_rate)
    return Calibration(
        structural=stats_s,
        logical=stats_l,
        weight_structural=fusion.weight_structural,
        weight_logical=fusion.weight_logical,
        gaussian_sigma=sigma,
        threshold=threshold,
        false_alarm_rate=fusion.false_alarm_rate,
        n_validation_images=int(structural_maps.shape[0]),
    )


def load_calibration(run_dir: Path) -> Calibration:
    """The run's calibration; CheckpointError naming the file when it is missing or damaged."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: train with --branch all to calibrate the fused detector")
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{path} is damaged ({exc}); retrain the run with `npgmf-edge train --branch all`"
        ) from exc
