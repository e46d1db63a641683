"""The official integration: trapezoids up to a limit, the last height interpolated on its segment."""

import numpy as np
import pytest

from npgmf_edge.metrics import normalized_area, trapezoid


def test_trapezoid_interpolates_the_height_at_the_limit() -> None:
    x, y = [0.0, 0.2, 0.6, 1.0], [0.0, 0.4, 0.8, 1.0]
    # Up to 0.4: 0.5*0.4*0.2 + 0.5*(0.4+0.6)*0.2 = 0.04 + 0.10.
    assert trapezoid(x, y, 0.4) == pytest.approx(0.14)
    assert trapezoid(x, y) == pytest.approx(np.trapezoid(y, x))
    assert normalized_area(x, y, 0.2) == pytest.approx(0.2)


def test_trapezoid_handles_vertical_steps_and_drops_non_finite_points() -> None:
    x, y = [0.0, 0.0, 0.5, np.nan, 1.0], [0.0, 1.0, 1.0, 0.3, 1.0]
    assert trapezoid(x, y, 0.25) == pytest.approx(0.25)


def test_trapezoid_rejects_a_limit_outside_the_curve() -> None:
    with pytest.raises(ValueError, match="outside"):
        trapezoid([0.0, 0.5], [0.0, 1.0], 0.8)
