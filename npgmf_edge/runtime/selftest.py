"""A bundle proves itself on the machine that opens it: a golden set run at `Inspector.open`, judged
against FP32 (docs/DEPLOY.md, "the self-test", has the budgets, margins and why means, not maxima).

The export stores (schema 3) validation images with the FP32 run's answers (image scores, threshold, fused
maps' DIGEST_GRID x DIGEST_GRID digests) and per precision an error budget: that graph's error on the
export machine plus MARGIN[precision]. A station's mean score error, mean map error and verdict flips
against FP32 must stay within them. MARGIN, FLIP_ALLOWANCE and DIGEST_GRID live in
`selftest_margins.json`, which the native build reads too: one home for both.

Files (numpy .npy, little-endian, C order, for any reader):
    selftest.pixels.npy            uint8   (N, 3, S, S)  the golden images, RGB, model input size
    selftest.reference_maps.npy    float32 (N, G, G)     FP32 fused-map digests (G = DIGEST_GRID)

This module knows neither the manifest nor the inspector: `runtime.selfcheck` runs the set through a
callable.

Example:
    >>> scores, digests = golden_outputs(inspector.run, pixels, batch=8)
    >>> score_error(scores, reference) <= budget_for("int8", export_error)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import platform_facts

PIXELS_FILE = "selftest.pixels.npy"
REFERENCE_MAPS_FILE = "selftest.reference_maps.npy"
LEGACY_FILE = "selftest.npz"  # schema <= 2: pixels and each precision's digests in one archive
GOLDEN_IMAGES = 12
NEAR_THRESHOLD = 8
_ALLOWANCES = json.loads((Path(__file__).with_name("selftest_margins.json")).read_text())
DIGEST_GRID: int = _ALLOWANCES["digest_grid"]
MARGIN: dict[str, float] = _ALLOWANCES["margin"]
FLIP_ALLOWANCE: int = _ALLOWANCES["flip_allowance"]
# What the self-test runs: float32 (B, 3, S, S) pixels -> at least {"score": (B,), "fused": (B, S, S)}.
RunGraph = Callable[[np.ndarray], dict[str, np.ndarray]]


class SelfTestError(BundleError):
    """A precision of a bundle answers too far from FP32 on this machine."""


@dataclass(frozen=True)
class SelfTestResult:
    precision: str
    backend: str  # what computed it here: `Backend.describe()`
    images: int
    score_error: float  # mean |score here - FP32 reference score|
    budget: float
    map_error: float | None  # mean |digest here - FP32 digest|; None: the bundle stored no FP32 digest
    map_budget: float | None
    verdict_flips: int | None  # golden images whose verdict here differs from FP32's; None: no threshold
    max_flips: int | None
    spread: float  # max |score here - the export machine's score at this precision| (reported only)
    seconds: float

    @property
    def passed(self) -> bool:
        # A NaN error (non-finite output) fails: comparisons with NaN are False.
        maps_ok = self.map_budget is None or bool(self.map_error <= self.map_budget)
        flips_ok = self.max_flips is None or self.verdict_flips <= self.max_flips
        return bool(self.score_error <= self.budget) and maps_ok and flips_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "backend": self.backend,
            "images": self.images,
            "score_error": self.score_error,
            "budget": self.budget,
            "margin": self.budget - self.score_error,
            "map_error": self.map_error,
            "map_budget": self.map_budget,
            "verdict_flips": self.verdict_flips,
            "max_flips": self.max_flips,
            "spread": self.spread,
            "passed": self.passed,
            "seconds": round(self.seconds, 4),
        }


def choose_golden(
    scores: np.ndarray, threshold: float, count: int = GOLDEN_IMAGES, near: int = NEAR_THRESHOLD
) -> np.ndarray:
    """Sorted indices of `count` images: the `near` whose FP32 `scores` are closest to `threshold`, then
    the others spread evenly over the remaining ones by score (lowest and highest included)."""
    count = min(count, len(scores))
    closest = np.argsort(np.abs(np.asarray(scores) - threshold), kind="stable")[: min(near, count)]
    rest = np.array([i for i in np.argsort(scores, kind="stable") if i not in set(closest.tolist())])
    spread = count - len(closest)
    picks = rest[np.linspace(0, len(rest) - 1, num=spread).round().astype(int)] if spread else rest[:0]
    return np.sort(np.concatenate([closest, picks]).astype(int))


def map_digest(fused: np.ndarray) -> np.ndarray:
    """(B, S, S) fused maps -> (B, DIGEST_GRID, DIGEST_GRID) block means: where a map changed, not only
    how its maximum did."""
    grid = (DIGEST_GRID, DIGEST_GRID)
    return np.stack([cv2.resize(m.astype(np.float32), grid, interpolation=cv2.INTER_AREA) for m in fused])


def golden_outputs(run: RunGraph, pixels: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and map digests of uint8 (N, 3, S, S) `pixels`, `batch` images per call of `run`."""
    scores, digests = [], []
    for start in range(0, len(pixels), batch):
        out = run(pixels[start : start + batch].astype(np.float32))
        scores.append(np.asarray(out["score"], dtype=np.float64))
        digests.append(map_digest(out["fused"]))
    return np.concatenate(scores), np.concatenate(digests)


def score_error(scores: np.ndarray, reference: np.ndarray) -> float:
    """mean |scores - reference|; NaN when any is not finite (a NaN never passes a budget)."""
    diff = np.abs(np.asarray(scores, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return float("nan") if not np.isfinite(diff).all() else float(diff.mean())


def verdict_flips(
    scores: np.ndarray, threshold: float, reference: np.ndarray, reference_threshold: float
) -> int:
    """How many images are anomalous by one (scores, threshold) and normal by the other."""
    return int(np.sum((np.asarray(scores) > threshold) != (np.asarray(reference) > reference_threshold)))


def budget_for(precision: str, measured_error: float) -> float:
    """The error a station may show: what the export machine's graph showed plus the precision's margin."""
    return float(measured_error + MARGIN[precision])


def write_golden(root: Path, pixels: np.ndarray, reference_maps: np.ndarray) -> None:
    """PIXELS_FILE and REFERENCE_MAPS_FILE in the bundle folder `root` (plain .npy, C order)."""
    np.save(Path(root) / PIXELS_FILE, np.ascontiguousarray(pixels, dtype=np.uint8), allow_pickle=False)
    np.save(
        Path(root) / REFERENCE_MAPS_FILE,
        np.ascontiguousarray(reference_maps, dtype="<f4"),
        allow_pickle=False,
    )


def expectations(
    scores: dict[str, np.ndarray],
    maps: dict[str, np.ndarray],
    thresholds: dict[str, float],
    reference: tuple[np.ndarray, np.ndarray, float],
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's `selftest` entry: the FP32 `reference` (scores, digests, threshold) and, per
    precision, what its graph answered here (`scores`, digests `maps`, its calibration's `thresholds`)
    measured against it, and the budgets that follow; and the export machine."""
    ref_scores, ref_maps, ref_threshold = reference
    precisions = {}
    for precision, values in scores.items():
        error = score_error(values, ref_scores)
        map_error = score_error(maps[precision], ref_maps)
        flips = verdict_flips(values, thresholds[precision], ref_scores, ref_threshold)
        precisions[precision] = {
            "scores": values.tolist(),
            "score_error": error,
            "budget": budget_for(precision, error),
            "map_error": map_error,
            "map_budget": budget_for(precision, map_error),
            "verdict_flips": flips,
            "max_flips": flips + FLIP_ALLOWANCE,
        }
    return {
        "pixels": PIXELS_FILE,
        "reference_maps": REFERENCE_MAPS_FILE,
        "images": len(ref_scores),
        "digest_grid": DIGEST_GRID,
        "reference": np.asarray(ref_scores, dtype=np.float64).tolist(),
        "reference_threshold": float(ref_threshold),
        "precisions": precisions,
        "machine": machine or platform_facts.machine_facts(),
    }


def load_golden(root: Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The golden pixels and FP32 digests (None where a migrated bundle has none)."""
    if "legacy_file" in entry:  # schema <= 2
        with np.load(root / entry["legacy_file"], allow_pickle=False) as golden:
            return golden["pixels"], golden.get("digest_fp32")
    pixels = np.load(root / entry["pixels"], allow_pickle=False)
    return pixels, np.load(root / entry["reference_maps"], allow_pickle=False)
