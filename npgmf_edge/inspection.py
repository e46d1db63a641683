"""The typed result of inspecting one image, and the one interface of everything that inspects images.

A score that is not a finite number is never a verdict: `verdict` is then "error" (as it is for an image
that could not be read), so a damaged model or input can never pass a part as "good".

`Detector` is what a run (`detector.RunDetector`, torch), a bundle (`runtime.BundleDetector`) and bench's
torch references offer; `MapDetector` adds the maps that evaluation, `verify` and calibration read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from npgmf_edge.calibration import Calibration
from npgmf_edge.postprocess import image_scores, smooth
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.progress import Reporter

ImageInput = Path | str | np.ndarray
BRANCH_NAMES = ("structural", "logical")


@dataclass(frozen=True)
class Inspection:
    """Score, verdict and anomaly map of one image (map at the image's original resolution). `error`: why
    there is no verdict; `branch_maps`: both branch maps at the model's input size, when asked for;
    `precision`: the bundle graph that answered (None for a run; another after a self-test fallback)."""

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


class Closing:
    """`close()` on leaving a `with` block: detectors, graph runners and serve clients hold resources."""

    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def batched_maps(
    images: Iterable[np.ndarray],
    total: int,
    batch: int,
    size: int,
    maps: Callable[[np.ndarray], dict[str, np.ndarray]],
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """`maps` of RGB uint8 images taken `batch` at a time (resized to `size`), and each one's original
    (height, width): only the sizes are kept, so the images need not all be in memory."""
    sizes: list[tuple[int, int]] = []
    iterator = iter(images)
    with Reporter("anomaly maps", total, unit="images", enabled=progress) as report:

        def batch_maps(chunk: list[np.ndarray]) -> dict[str, np.ndarray]:
            sizes.extend(image.shape[:2] for image in chunk)
            report.advance(len(chunk))
            return maps(np.stack([to_model_input(image, size) for image in chunk]))

        chunks = iter(lambda: list(islice(iterator, batch)), [])
        result = concat_batches(batch_maps(chunk) for chunk in chunks)
    return result, sizes


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
