"""Verdict thresholds from normal validation image scores."""

from __future__ import annotations

import numpy as np

from npgmf_edge.errors import ConfigError


def threshold_for_false_alarm_rate(normal_scores: np.ndarray, false_alarm_rate: float) -> float:
    """Smallest threshold with at most `false_alarm_rate` of normal images scoring strictly above it (a
    verdict is "anomalous" when score > threshold); with n images, a multiple of 1/n, never above it."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ConfigError("cannot calibrate a threshold: no normal validation scores")
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ConfigError(f"false alarm rate must be in [0, 1), got {false_alarm_rate}")
    allowed_alarms = int(np.floor(false_alarm_rate * scores.size))
    return float(scores[scores.size - 1 - allowed_alarms])
