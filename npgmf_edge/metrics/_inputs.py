"""Checks shared by the metrics: score maps are finite 2-D arrays, masks are boolean and the same size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def score_maps(anomaly_maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The maps as 2-D arrays of one common numeric dtype (so scores compare exactly across images)."""
    arrays = [np.asarray(m) for m in anomaly_maps]
    if not arrays:
        raise ValueError("no anomaly maps given")
    for index, array in enumerate(arrays):
        if array.ndim != 2:
            raise ValueError(f"anomaly map {index} has shape {array.shape}; expected a 2-D (H, W) array")
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ValueError(f"anomaly map {index} has dtype {array.dtype}; expected real numbers")
        if not np.isfinite(array).all():
            raise ValueError(f"anomaly map {index} contains NaN or infinite scores")
    dtype = np.result_type(*arrays)
    return [array.astype(dtype, copy=False) for array in arrays]


def boolean_mask(mask: np.ndarray | None, shape: tuple[int, ...], index: int, what: str) -> np.ndarray:
    """`mask` (nonzero = defect) as bool of the map's shape; None means a defect-free image."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"{what} of image {index} has shape {array.shape} but its anomaly map has {shape}")
    return array if array.dtype == bool else array != 0


def same_length(first: Sequence, second: Sequence, names: str) -> None:
    if len(first) != len(second):
        raise ValueError(f"{names} must be equally long; got {len(first)} and {len(second)}")
