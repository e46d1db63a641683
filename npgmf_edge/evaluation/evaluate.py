"""Score a dataset's test split from its score maps: image AUROC, pixel AUROC, AUPRO and (LOCO) AUC-sPRO.

Subsets as the official script reports them: for MVTec LOCO AD each anomaly folder with all good test
images, plus their "mean"; other formats one subset, "all", and no sPRO (it needs defects_config.json).
The JSON-ready result uses the official keys where it has them:
    classification.auc_roc.<subset>                image AUROC (image score = max of the map, unless given)
    localization.auc_spro.<subset>.<max fpr>       AUC-sPRO, limits "0.01" "0.05" "0.1" "0.3" "1.0" (LOCO)
and ours beside them:
    localization.auc_roc.<subset>                  pixel AUROC
    localization.auc_pro.<subset>."0.3"            AUPRO (MVTec AD definition)
    per_image: [{"image": "<type>/<id>", "defect_type", "label", "score"}]

Example:
    >>> results = evaluate_maps(dataset, read_maps(Path("maps"), dataset))
    >>> results["localization"]["auc_spro"]["mean"]["0.05"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.data import AnomalyDataset, Sample, read_defect_regions, read_ground_truth
from npgmf_edge.errors import DatasetError
from npgmf_edge.metrics import (
    MAX_FPRS,
    PRO_MAX_FPR,
    SaturatedRegion,
    auc_spro,
    aupro,
    image_auroc,
    pixel_auroc,
)

MEAN = "mean"
ALL = "all"


def fpr_key(max_fpr: float) -> str:
    """An FPR limit as the official script's JSON writes it: "0.01", "0.05", "0.1", "0.3", "1.0"."""
    return repr(float(max_fpr))


def _subsets(dataset: AnomalyDataset) -> dict[str, list[Sample]]:
    anomalous = [s for s in dataset.test if s.label == 1]
    if not dataset.defects_config:
        return {ALL: anomalous}
    types = sorted({s.defect_type for s in anomalous})
    return {t: [s for s in anomalous if s.defect_type == t] for t in types}


def _map_of(maps: Mapping[Path, np.ndarray], sample: Sample) -> np.ndarray:
    if sample.image_path not in maps:
        raise DatasetError(f"no score map for test image {sample.image_path}")
    amap = np.asarray(maps[sample.image_path])
    if amap.ndim != 2:
        raise DatasetError(f"score map for {sample.image_path} has shape {amap.shape}; expected (H, W)")
    return amap


def _check_size(amap: np.ndarray, mask: np.ndarray, sample: Sample, mask_path: Path | str) -> None:
    if amap.shape != mask.shape:
        raise DatasetError(
            f"score map for {sample.image_path} is {amap.shape[0]}x{amap.shape[1]} (height x width) but "
            f"its ground truth {mask_path} is {mask.shape[0]}x{mask.shape[1]}; "
            "maps must have the original image resolution"
        )


def _ground_truth(
    dataset: AnomalyDataset, sample: Sample, amap: np.ndarray
) -> tuple[np.ndarray, list[SaturatedRegion]]:
    """(union mask, sPRO regions) of an anomalous sample; regions only for LOCO (with defects_config)."""
    if dataset.defects_config:
        regions = read_defect_regions(sample, dataset.defects_config)
        for region in regions:
            _check_size(amap, region.mask, sample, region.path)
        saturated = [SaturatedRegion(r.mask, r.spec.saturation_area(r.area)) for r in regions]
        return np.logical_or.reduce([r.mask for r in regions]), saturated
    union = read_ground_truth(sample)
    _check_size(amap, union, sample, sample.mask_paths[0] if sample.mask_paths else "mask")
    return union, []


def _mean(values: Sequence[Any]) -> Any:
    """Mean of floats, or of dicts of floats key by key."""
    if isinstance(values[0], dict):
        return {key: _mean([v[key] for v in values]) for key in values[0]}
    return float(np.mean(values))


def evaluate_maps(
    dataset: AnomalyDataset,
    maps: Mapping[Path, np.ndarray],
    max_fprs: Sequence[float] = MAX_FPRS,
    image_scores: Mapping[Path, float] | None = None,
) -> dict[str, Any]:
    """All metrics of `dataset.test` from `maps` ({sample.image_path: (H, W) map}), per subset and mean.
    Image scores are the maps' maxima unless `image_scores` gives them (a detector fusing at image level).

    Pixel metrics need a mask for every anomalous test image; without them only image AUROC is reported
    (`localization` is empty). Raises DatasetError for a missing map, a size mismatch, or a test split
    without good or without anomalous images.
    """
    good = [s for s in dataset.test if s.label == 0]
    subsets = _subsets(dataset)
    where = f"test split of {dataset.root}"
    if not good:
        raise DatasetError(f"{where} has no good images; AUROC and (s)PRO compare anomalous with good images")
    if not any(subsets.values()):
        raise DatasetError(f"{where} has no anomalous images; there is nothing to detect")

    scored = {s.image_path: _map_of(maps, s) for s in dataset.test}
    scores = {path: float(amap.max()) for path, amap in scored.items()}
    if image_scores is not None:
        scores = {path: float(image_scores[path]) for path in scored}
    pixel_level = bool(dataset.defects_config) or dataset.has_pixel_masks
    truth: dict[Path, tuple[np.ndarray, list[SaturatedRegion]]] = {}
    if pixel_level:
        for sample in dataset.test:
            if sample.label == 1:
                truth[sample.image_path] = _ground_truth(dataset, sample, scored[sample.image_path])

    auc_roc: dict[str, Any] = {}
    localization: dict[str, dict[str, Any]] = {}
    for name, anomalous in subsets.items():
        members = good + anomalous
        labels = [s.label for s in members]
        auc_roc[name] = image_auroc(labels, [scores[s.image_path] for s in members])
        if not pixel_level:
            continue
        subset_maps = [scored[s.image_path] for s in members]
        masks = [truth[s.image_path][0] if s.label else None for s in members]
        localization.setdefault("auc_roc", {})[name] = pixel_auroc(subset_maps, masks)
        localization.setdefault("auc_pro", {})[name] = {fpr_key(PRO_MAX_FPR): aupro(subset_maps, masks)}
        if dataset.defects_config:
            regions = [truth[s.image_path][1] if s.label else [] for s in members]
            areas = auc_spro(subset_maps, regions, max_fprs)
            localization.setdefault("auc_spro", {})[name] = {fpr_key(k): v for k, v in areas.items()}
    if len(subsets) > 1:
        auc_roc[MEAN] = _mean([auc_roc[name] for name in subsets])
        for per_subset in localization.values():
            per_subset[MEAN] = _mean([per_subset[name] for name in subsets])

    return {
        "category": dataset.category,
        "format": dataset.format,
        "subsets": [*subsets, *([MEAN] if len(subsets) > 1 else [])],
        "counts": {"good": len(good), **{name: len(samples) for name, samples in subsets.items()}},
        "classification": {"auc_roc": auc_roc},
        "localization": localization,
        "per_image": [
            {
                "image": f"{s.defect_type}/{s.image_id}",
                "defect_type": s.defect_type,
                "label": s.label,
                "score": scores[s.image_path],
            }
            for s in dataset.test
        ],
    }
