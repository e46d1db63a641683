"""The typed result of inspecting one image, and the one interface of everything that inspects images.

A score that is not a finite number is never a verdict: `verdict` is then "error" (as it is for an image
that could not be read), so a damaged model or input can never pass a part as "good".

`Detector` is what a run (`detector.RunDetector`, torch), a bundle (`runtime.BundleDetector`) and bench's
torch references offer; `MapDetector` adds the maps that evaluation, `verify` and calibration read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from npgmf_edge.calibration import Calibration
from npgmf_edge.postprocess import image_scores, smooth

ImageInput = Path | str | np.ndarray
BRANCH_NAMES = ("structural", "logical")


@dataclass(frozen=True)
class Inspection:
    """Score, verdict and anomaly map of one image (map at the image's original resolution).

    `error` says why there is no verdict (unreadable image, non-finite score); `branch_maps` holds the
    logical and structural maps at the model's input size when they were asked for; `precision` is the
    bundle graph that answered (None for a torch run), which differs from the one asked for after a
    self-test fallback.
    """

    score: float
    threshold: float
    anomaly_map: np.ndarray | None
    error: str | None = None
    branch_maps: dict[str, np.ndarray] = field(default_factory=dict)
    precision: str | None = None

    @classmethod
    def failed(cls, threshold: float, reason: str, precision: str | None = None) -> Inspection:
        return cls(float("nan"), threshold, None, error=reason, precision=precision)

    @property
    def problem(self) -> str | None:
        """Why this inspection gives no verdict, or None when it does."""
        if self.error is not None:
            return self.error
        if not math.isfinite(self.score):
            return f"the anomaly score is not a finite number ({self.score}); the model files may be damaged"
        return None

    @property
    def is_anomalous(self) -> bool:
        return self.problem is None and self.score > self.threshold

    @property
    def verdict(self) -> str:
        if self.problem is not None:
            return "error"
        return "anomalous" if self.score > self.threshold else "good"


class Detector(Protocol):
    """Images in, one `Inspection` each out (an unreadable image gets one with its error)."""

    @property
    def calibration(self) -> Calibration | None: ...

    def inspect(self, images: Sequence[ImageInput]) -> list[Inspection]: ...

    def close(self) -> None: ...


class MapDetector(Detector, Protocol):
    """A detector whose maps can be read: what evaluation and `verify` need."""

    def maps(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 3, S, S) float32 pixels -> raw (N, S, S) branch maps ("structural", "logical": those it has)
        and, when calibrated, the post stage's "fused" (N, S, S) map and (N,) "score"."""
        ...

    def maps_and_sizes(
        self, image_paths: Sequence[Path], progress: bool = False
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]: ...

    def scored_maps(
        self, maps: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]: ...

    def answered_by(self) -> dict[str, str | None]:
        """Which bundle graph answered and why it is not the one asked for (empty for a run)."""
        ...


def concat_batches(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch outputs {name: (b, ...)} -> {name: (N, ...)}."""
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, value in batch.items():
            chunks.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in chunks.items()}


def scored_maps(
    maps: dict[str, np.ndarray], sigma: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What evaluation scores: each branch map smoothed with its image scores (max), and the fused map
    with the post stage's image scores where `maps` has them."""
    scored = {name: smooth(maps[name], sigma) for name in BRANCH_NAMES if name in maps}
    scores = {name: image_scores(value) for name, value in scored.items()}
    if "fused" in maps:
        scored["fused"], scores["fused"] = maps["fused"], maps["score"]
    return scored, scores
