"""A plain-text table of `evaluate_maps` results: one row per branch and subset.

Example:
    >>> print(format_results_table({"fused": results}))
    branch  subset                image AUROC  pixel AUROC  AUPRO@0.3  sPRO@0.05
    fused   logical_anomalies           0.912        0.871      0.802      0.654
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from npgmf_edge.calibration import Calibration
from npgmf_edge.calibration.fusion_choice import untaken_lift_text
from npgmf_edge.evaluation.evaluate import fpr_key
from npgmf_edge.metrics import PRO_MAX_FPR

SPRO_LIMIT = 0.05  # the limit papers on MVTec LOCO AD usually quote
COLUMNS = ("branch", "subset", "image AUROC", "pixel AUROC", f"AUPRO@{PRO_MAX_FPR}", f"sPRO@{SPRO_LIMIT}")
MISSING = "-"


def _number(value: Any) -> str:
    return MISSING if value is None else f"{float(value):.3f}"


def _row(branch: str, subset: str, results: Mapping[str, Any]) -> list[str]:
    localization = results.get("localization") or {}
    pro = (localization.get("auc_pro") or {}).get(subset) or {}
    spro = (localization.get("auc_spro") or {}).get(subset) or {}
    return [
        branch,
        subset,
        _number(results.get("classification", {}).get("auc_roc", {}).get(subset)),
        _number((localization.get("auc_roc") or {}).get(subset)),
        _number(pro.get(fpr_key(PRO_MAX_FPR))),
        _number(spro.get(fpr_key(SPRO_LIMIT))),
    ]


def format_results_table(results_by_branch: Mapping[str, Mapping[str, Any]]) -> str:
    """Aligned text: text columns left, numbers right; "-" where a metric does not apply."""
    rows = [
        _row(branch, subset, results)
        for branch, results in results_by_branch.items()
        for subset in results.get("subsets", [])
    ]
    table = [list(COLUMNS), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_fusion_table(calibration: Calibration) -> str:
    """How the fused detector fuses: the chosen level and weights, and (when chosen on pseudo-anomalies)
    each branch's and each candidate's pseudo-anomaly image AUROC."""
    c = calibration
    head = f"fusion: {c.fusion_level} level, weights {c.weight_structural:g}:{c.weight_logical:g}"
    selection = c.fusion_selection
    if selection is None:
        return f"{head} (calibrated before fusion was chosen per run)"
    if selection.mode == "auto":
        how = (
            "auto: the logical branch gets weight only where it beats chance and lifts the structural "
            f"branch; image level first; the least logical weight within {selection.margin:g} of the best"
        )
    else:
        how = f"{selection.mode}: the weights as given, at pixel level; the AUROCs for comparison"
    lines = [
        f"{head} ({how})",
        f"pseudo-anomaly image AUROC ({selection.n_pseudo} pseudo-anomalous vs {selection.n_normal} normal "
        f"validation images): structural {selection.structural_auroc:.3f}, logical "
        f"{selection.logical_auroc:.3f}",
        "level  weights  AUROC  lift_low  chosen",
    ]
    for cand in selection.candidates:
        chosen = (cand.level, cand.weight_structural, cand.weight_logical) == (
            c.fusion_level,
            c.weight_structural,
            c.weight_logical,
        )
        weights = f"{cand.weight_structural:g}:{cand.weight_logical:g}"
        mark = "*" if chosen else ""
        lines.append(
            f"{cand.level:<5}  {weights:>7}  {cand.auroc:.3f}  {cand.lift_low:>8.3f}  {mark}".rstrip()
        )
    untaken = untaken_lift_text(c)
    return "\n".join([*lines, f"not taken: {untaken}"] if untaken else lines)
