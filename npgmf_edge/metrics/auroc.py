"""Image-level and pixel-level AUROC.

Image AUROC is scikit-learn's `roc_auc_score`. Pixel AUROC pools every pixel of every image (hundreds of
millions at full resolution, too many for `roc_auc_score`), so it is the Mann-Whitney statistic from one
sort of the normal pixels: P(defect > normal) plus half of P(tie), the trapezoidal AUC with ties that
scikit-learn computes (tests check they agree).

Example:
    >>> image_auroc([0, 0, 1], [0.1, 0.4, 0.9])
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npgmf_edge.metrics._inputs import boolean_mask, same_length, score_maps


def _check_two_classes(labels: np.ndarray, what: str) -> None:
    n_anomalous = int(labels.sum())
    if n_anomalous == 0 or n_anomalous == labels.size:
        present = "anomalous" if n_anomalous else "normal"
        raise ValueError(
            f"{what} AUROC needs both normal and anomalous {what}s; all {labels.size} are {present}"
        )


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores; `labels` are 0 (normal) or 1 (anomalous)."""
    from sklearn.metrics import roc_auc_score

    label_array = np.asarray(labels)
    score_array = np.asarray(scores, dtype=np.float64)
    same_length(label_array, score_array, "labels and scores")
    if label_array.ndim != 1 or not np.isin(label_array, (0, 1)).all():
        raise ValueError("labels must be a 1-D sequence of 0 (normal) and 1 (anomalous)")
    if not np.isfinite(score_array).all():
        raise ValueError("image scores contain NaN or infinite values")
    _check_two_classes(label_array, "image")
    return float(roc_auc_score(label_array, score_array))


def pixel_auroc(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> float:
    """AUROC over all pixels of all images; `masks[i]` nonzero = defect, None = a good image."""
    maps = score_maps(anomaly_maps)
    same_length(maps, masks, "anomaly maps and masks")
    normal_parts, defect_parts = [], []
    for index, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        inside = boolean_mask(mask, amap.shape, index, "mask")
        normal_parts.append(amap[~inside])
        defect_parts.append(amap[inside])
    normal = np.concatenate(normal_parts)
    defect = np.concatenate(defect_parts)
    if normal.size == 0 or defect.size == 0:
        present = "defect" if defect.size else "normal"
        raise ValueError(f"pixel AUROC needs both normal and defect pixels; all pixels are {present}")
    normal.sort()
    defect.sort()  # sorted queries make the binary searches below cache-friendly (several times faster)
    below = np.searchsorted(normal, defect, side="left")
    below_or_tied = np.searchsorted(normal, defect, side="right")
    wins = np.sum(below, dtype=np.float64) + 0.5 * np.sum(below_or_tied - below, dtype=np.float64)
    return float(wins / (float(normal.size) * float(defect.size)))
