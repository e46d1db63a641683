"""Fit the fusion statistics (Eq. 11) and the verdict threshold on normal validation images.

Writes `calibration.json` into the run directory; export copies it into the bundle manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.calibration.threshold import threshold_for_false_alarm_rate
from npgmf_edge.config import FUSION_MODES, FusionConfig
from npgmf_edge.errors import CheckpointError, ConfigError
from npgmf_edge.fileio import save_json
from npgmf_edge.postprocess import (
    FUSION_LEVELS,
    BranchStats,
    FusionParams,
    branch_image_scores,
    post_process,
)

CALIBRATION_FILE = "calibration.json"
PSEUDO_SAMPLE_FILE = "pseudo_anomalies.png"  # a sample of the pseudo-anomalies the fusion was chosen on
MIN_STD = 1e-8  # a constant branch map (e.g. an untrained branch) must not divide by zero


@dataclass(frozen=True)
class FusionCandidate:
    """One fusion tried at calibration: its level, weights and image AUROC on the pseudo-anomalies."""

    level: str
    weight_structural: float
    weight_logical: float
    auroc: float
    lift_low: float  # bootstrap lower bound of its AUROC gain over the structural branch alone


@dataclass(frozen=True)
class FusionSelection:
    """How the fusion was chosen (`calibration.fusion_choice`): the rule, the pseudo-anomaly image AUROC of
    each branch alone and of every candidate, and how many images they were measured on."""

    mode: str  # "auto", "paper" or "fixed" (weights given as S:L)
    margin: float  # auto keeps the least logical weight within this AUROC of the best
    structural_auroc: float
    logical_auroc: float
    n_normal: int
    n_pseudo: int
    candidates: tuple[FusionCandidate, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionSelection:
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"fusion_selection must hold exactly {[f.name for f in fields(cls)]}")
        if not isinstance(data["candidates"], list | tuple):
            raise ValueError(f"fusion_selection.candidates must be a list, got {data['candidates']!r}")
        candidates = []
        for item in data["candidates"]:
            if not isinstance(item, dict) or set(item) != {f.name for f in fields(FusionCandidate)}:
                raise ValueError(f"malformed fusion candidate {item!r}")
            candidates.append(
                FusionCandidate(
                    _level(item["level"]),
                    *(
                        _finite(name, item[name])
                        for name in ("weight_structural", "weight_logical", "auroc", "lift_low")
                    ),
                )
            )
        if data["mode"] not in FUSION_MODES:
            raise ValueError(f"fusion_selection.mode must be one of {FUSION_MODES}, got {data['mode']!r}")
        return cls(
            mode=data["mode"],
            margin=_finite("margin", data["margin"]),
            structural_auroc=_finite("structural_auroc", data["structural_auroc"]),
            logical_auroc=_finite("logical_auroc", data["logical_auroc"]),
            n_normal=int(_finite("n_normal", data["n_normal"])),
            n_pseudo=int(_finite("n_pseudo", data["n_pseudo"])),
            candidates=tuple(candidates),
        )


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
    fusion_level: str = "pixel"  # "pixel": score = max of Eq. 11's map; "image": branch image scores fused
    structural_image: BranchStats | None = None  # branch image-score statistics (level "image")
    logical_image: BranchStats | None = None
    fusion_selection: FusionSelection | None = None  # None: calibrated before fusion was chosen per run

    @property
    def params(self) -> FusionParams:
        return FusionParams(
            self.structural,
            self.logical,
            self.weight_structural,
            self.weight_logical,
            self.gaussian_sigma,
            self.fusion_level,
            self.structural_image,
            self.logical_image,
        )

    @property
    def pseudo_auroc(self) -> float:
        """Pseudo-anomaly image AUROC of this fusion (NaN when not measured: a calibration from before
        fusion was chosen per run, or fixed weights outside the grid)."""
        chosen = (self.fusion_level, self.weight_structural, self.weight_logical)
        for c in self.fusion_selection.candidates if self.fusion_selection else ():
            if (c.level, c.weight_structural, c.weight_logical) == chosen:
                return c.auroc
        return math.nan

    def post(self, structural: np.ndarray, logical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw branch maps -> (fused map, image scores): `postprocess.post_process` with this calibration."""
        return post_process(structural, logical, self.params)

    def save(self, run_dir: Path) -> Path:
        return save_json(asdict(self), Path(run_dir) / CALIBRATION_FILE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of `to_dict`; ValueError naming the key when one is missing, unknown, or not a finite
        number (a string threshold must not reach a comparison). A calibration from before fusion was
        chosen per run (`LEGACY_KEYS`) reads as pixel-level fusion with its own weights. Callers name
        the file."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) == LEGACY_KEYS:
            data = upgrade_legacy_calibration(data)
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise ValueError(f"missing keys {missing}, unknown keys {unknown}")
        values = dict(data)
        for branch in ("structural", "logical", "structural_image", "logical_image"):
            if data[branch] is None and branch.endswith("_image"):
                continue
            stats = data[branch]
            if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
                raise ValueError(f"{branch} must hold exactly mean and std, got {stats!r}")
            values[branch] = BranchStats(
                _finite(f"{branch}.mean", stats["mean"]), _finite(f"{branch}.std", stats["std"])
            )
        values["fusion_level"] = _level(data["fusion_level"])
        if values["fusion_level"] == "image" and None in (
            values["structural_image"],
            values["logical_image"],
        ):
            raise ValueError("fusion_level 'image' needs structural_image and logical_image statistics")
        if data["fusion_selection"] is not None:
            values["fusion_selection"] = FusionSelection.from_dict(data["fusion_selection"])
        for name in names - NON_NUMBER_KEYS:
            values[name] = _finite(name, data[name])
        values["n_validation_images"] = int(values["n_validation_images"])
        return cls(**values)


# Keys added when the fusion level and weights came to be chosen per run; a calibration without them is
# from before, and fused at pixel level with its own weights.
CHOICE_KEYS = frozenset({"fusion_level", "structural_image", "logical_image", "fusion_selection"})
LEGACY_KEYS = {f.name for f in fields(Calibration)} - CHOICE_KEYS
NON_NUMBER_KEYS = {"structural", "logical", *CHOICE_KEYS}


def upgrade_legacy_calibration(data: dict[str, Any]) -> dict[str, Any]:
    """A calibration dict from before per-run fusion, as the pixel-level fusion it always was."""
    return {**data, "fusion_level": "pixel", "structural_image": None, "logical_image": None,
            "fusion_selection": None}  # fmt: skip


def _level(value: Any) -> str:
    if value not in FUSION_LEVELS:
        raise ValueError(f"fusion_level must be one of {FUSION_LEVELS}, got {value!r}")
    return value


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def branch_stats(maps: np.ndarray) -> BranchStats:
    """Mean and std over every pixel of every normal validation map of one branch."""
    values = np.asarray(maps, dtype=np.float64)
    return BranchStats(mean=float(values.mean()), std=max(float(values.std()), MIN_STD))


def calibrate(
    structural_maps: np.ndarray,
    logical_maps: np.ndarray,
    fusion: FusionConfig,
    sigma: float,
    choice: Calibration | None = None,
) -> Calibration:
    """Calibration from (N, H, W) branch maps of N normal validation images (N >= 1): statistics and
    threshold from these maps; the fusion level, weights and selection record from `choice` (a calibration
    whose fusion was chosen, `fusion_choice.choose_fusion`), else the configured weights at pixel level."""
    if structural_maps.shape != logical_maps.shape or structural_maps.ndim != 3:
        raise ConfigError(
            f"branch maps must be (N, H, W) and equal: {structural_maps.shape} vs {logical_maps.shape}"
        )
    if structural_maps.shape[0] == 0:
        raise ConfigError("calibration needs at least one normal validation image")
    calibration = Calibration(
        structural=branch_stats(structural_maps),
        logical=branch_stats(logical_maps),
        weight_structural=fusion.weight_structural if choice is None else choice.weight_structural,
        weight_logical=fusion.weight_logical if choice is None else choice.weight_logical,
        gaussian_sigma=sigma,
        threshold=0.0,  # set below, from this calibration's own image scores
        false_alarm_rate=fusion.false_alarm_rate,
        n_validation_images=int(structural_maps.shape[0]),
        fusion_level="pixel" if choice is None else choice.fusion_level,
        structural_image=branch_stats(branch_image_scores(structural_maps, sigma)),
        logical_image=branch_stats(branch_image_scores(logical_maps, sigma)),
        fusion_selection=None if choice is None else choice.fusion_selection,
    )
    scores = calibration.post(structural_maps, logical_maps)[1]
    threshold = threshold_for_false_alarm_rate(scores, fusion.false_alarm_rate)
    return dataclasses.replace(calibration, threshold=threshold)


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
