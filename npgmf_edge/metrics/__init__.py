"""The field's anomaly-detection metrics as pure functions of numpy arrays (SPEC §3).

- `image_auroc`, `pixel_auroc` (auroc.py)
- `pro_curve`, `aupro`: MVTec AD per-region overlap up to FPR 0.3 (pro.py)
- `spro_curve`, `auc_spro`: MVTec LOCO AD saturated PRO up to FPR 0.01 .. 1.0 (spro.py)
- `trapezoid`, `normalized_area`: the official scripts' integration up to a limit (curve.py)

Curves are exact (a point at every distinct score) and areas are computed in closed form from one sort,
so a full test set takes seconds. docs/DESIGN.md ("Metrics") records how they match the official scripts.
"""

from npgmf_edge.metrics.auroc import image_auroc, pixel_auroc
from npgmf_edge.metrics.curve import normalized_area, trapezoid
from npgmf_edge.metrics.pro import PRO_MAX_FPR, aupro, connected_regions, pro_curve
from npgmf_edge.metrics.spro import MAX_FPRS, RegionCurve, SaturatedRegion, auc_spro, spro_curve

__all__ = [
    "MAX_FPRS",
    "PRO_MAX_FPR",
    "RegionCurve",
    "SaturatedRegion",
    "auc_spro",
    "aupro",
    "connected_regions",
    "image_auroc",
    "normalized_area",
    "pixel_auroc",
    "pro_curve",
    "spro_curve",
    "trapezoid",
]
