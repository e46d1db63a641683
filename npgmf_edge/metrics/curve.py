"""Area under a piecewise-linear curve up to an integration limit, as the MVTec evaluation scripts do.

Both official scripts (MVTec AD `generic_util.trapezoid`, MVTec LOCO AD `util.trapz`) integrate with the
trapezoidal rule over the points whose x is at most the limit, and close the gap to the limit with one
trapezoid whose right height is linearly interpolated between the two points around the limit. Dividing
by the limit (`normalized_area`) gives AUPRO / AUC-sPRO in [0, 1].

Example:
    >>> normalized_area([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], max_x=0.25)
    0.25
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def trapezoid(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, max_x: float | None = None
) -> float:
    """Area under the points (x, y), x ascending (repeats allowed), optionally up to `max_x`.

    Points with a non-finite coordinate are dropped. `max_x` must lie within [x[0], x[-1]].
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D and equally long; got shapes {xs.shape} and {ys.shape}")
    finite = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[finite], ys[finite]
    if xs.size < 2:
        raise ValueError("a curve needs at least two finite points")
    if np.any(np.diff(xs) < 0):
        raise ValueError("x must be sorted in ascending order")
    correction = 0.0
    if max_x is not None:
        if not xs[0] <= max_x <= xs[-1]:
            raise ValueError(f"max_x={max_x} lies outside the curve's x range [{xs[0]}, {xs[-1]}]")
        if max_x not in xs:
            right = int(np.searchsorted(xs, max_x, side="right"))  # first point beyond the limit
            x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
            y_at_limit = y0 + (y1 - y0) * (max_x - x0) / (x1 - x0)
            correction = 0.5 * (y0 + y_at_limit) * (max_x - x0)
        keep = xs <= max_x
        xs, ys = xs[keep], ys[keep]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)) + correction)


def normalized_area(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, max_x: float) -> float:
    """Area under the curve up to `max_x`, divided by `max_x` (1.0 for a curve that is 1 everywhere)."""
    if not max_x > 0:
        raise ValueError(f"the integration limit must be positive; got {max_x}")
    return trapezoid(x, y, max_x) / max_x
