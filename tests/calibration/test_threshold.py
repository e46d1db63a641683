"""Verdict thresholds never exceed the requested false-alarm rate on the validation scores."""

import numpy as np
import pytest

from npgmf_edge.calibration import threshold_for_false_alarm_rate
from npgmf_edge.errors import ConfigError


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.25])
def test_false_alarm_rate_on_validation_is_at_most_the_requested_rate(rate: float) -> None:
    scores = np.random.default_rng(0).normal(size=40)
    threshold = threshold_for_false_alarm_rate(scores, rate)
    assert np.mean(scores > threshold) <= rate
    # and it is the tightest such threshold: one step lower would exceed the rate
    lower = np.sort(scores)[np.sort(scores) < threshold]
    if lower.size:
        assert np.mean(scores > lower[-1]) > rate


def test_zero_rate_threshold_is_the_largest_normal_score() -> None:
    assert threshold_for_false_alarm_rate(np.array([0.2, 0.9, 0.4]), 0.0) == 0.9


def test_empty_scores_are_refused() -> None:
    with pytest.raises(ConfigError, match="no normal validation scores"):
        threshold_for_false_alarm_rate(np.array([]), 0.01)


def test_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"false alarm rate must be in \[0, 1\), got 1.5"):
        threshold_for_false_alarm_rate(np.array([1.0]), 1.5)
