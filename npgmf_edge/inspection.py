"""The typed result of inspecting one image, shared by the torch detector and the deployment runtime.

A score that is not a finite number is never a verdict: `verdict` is then "error" (as it is for an image
that could not be read), so a damaged model or input can never pass a part as "good".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


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
