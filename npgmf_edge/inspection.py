"""The typed result of inspecting one image, shared by the torch detector and the deployment runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Inspection:
    """Score, verdict and anomaly map of one image (map at the image's original resolution)."""

    score: float
    threshold: float
    anomaly_map: np.ndarray

    @property
    def is_anomalous(self) -> bool:
        return self.score > self.threshold

    @property
    def verdict(self) -> str:
        return "anomalous" if self.is_anomalous else "good"
