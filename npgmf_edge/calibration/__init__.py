"""Calibration on normal validation images: branch pixel statistics and the verdict threshold."""

from npgmf_edge.calibration.calibrate import Calibration, calibrate, load_calibration
from npgmf_edge.calibration.threshold import threshold_for_false_alarm_rate

__all__ = ["Calibration", "calibrate", "load_calibration", "threshold_for_false_alarm_rate"]
