"""`npgmf-edge verify`: every graph of a bundle against the torch `InspectionNet` of its run.

For each precision and backend on the dataset's test images: the maps' and image scores' differences,
verdict agreement, on labelled data the image AUROC beside torch's, and the bundle's self-test here. FP32
must match torch within `FP32_TOLERANCES`; FP16 and INT8 must keep `LOW_PRECISION_LIMITS` (verdicts,
AUROC gap); every precision must pass its self-test. `passed`: every row holds; `fp32_parity`: the FP32
rows do.

Example:
    >>> report = verify_bundle(Path("bundle"), Path("runs/tray"), load_dataset(Path("data")))
    >>> report.fp32_parity
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.data import AnomalyDataset, read_image
from npgmf_edge.detector import RunDetector
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.runtime.detector import BundleDetector
from npgmf_edge.runtime.inspector import Inspector
from npgmf_edge.runtime.manifest import read_manifest

# FP32 bundle vs torch: maps within 1e-4 absolute or 1e-5 of the map's largest value (the structural
# map of a 256-D coreset holds distances of ~30, where float32 rounding alone differs by ~1e-4), image
# scores relative, verdicts identical.
FP32_TOLERANCES = {"map_max_abs": 1e-4, "map_max_rel": 1e-5, "score_max_rel": 1e-5, "verdict_agreement": 1.0}
# FP16 / INT8 vs torch: what DEPLOY promises of a low precision that a bundle may hold.
LOW_PRECISION_LIMITS = {"verdict_agreement": 0.98, "auroc_gap": 0.01}


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(set(labels.tolist())) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def compare_outputs(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    threshold_reference: float,
    threshold_candidate: float,
    manifest: bool = False,
) -> dict[str, float]:
    """A graph's maps and image scores against a reference's on the same images, each judged by its own
    threshold: a `verify` row, or with `manifest` the branch maps' and scores' entry the export records."""
    from scipy.stats import spearmanr

    ref, got = reference["score"], candidate["score"]
    report: dict[str, float] = {"images": len(ref)} if manifest else {}
    for name in ("logical", "structural") if manifest else ("logical", "structural", "fused"):
        diff = np.abs(reference[name] - candidate[name])
        report[f"{name}_map_max_abs_diff"] = float(diff.max())
        report[f"{name}_map_mean_abs_diff"] = float(diff.mean())
    if manifest:
        report["score_rank_correlation"] = float(spearmanr(ref, got).statistic) if len(ref) > 1 else 1.0
        report["score_drift"] = score_drift(ref, got)
    else:
        report["score_max_rel_diff"] = float((np.abs(ref - got) / np.maximum(np.abs(ref), 1e-12)).max())
        report["score_max_abs_diff"] = float(np.abs(ref - got).max())
    report["verdict_agreement"] = float(np.mean((ref > threshold_reference) == (got > threshold_candidate)))
    return report


def score_drift(reference: np.ndarray, candidate: np.ndarray) -> float:
    """mean |candidate - reference| / mean |reference|: how far a precision moves image scores, as a share of
    their size (each precision's scores are in standard deviations of its own normal pixels)."""
    return float(np.abs(candidate - reference).mean() / max(np.abs(reference).mean(), 1e-12))


def _compare(
    reference: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold_ref: float, threshold_got: float
) -> dict[str, float]:
    """A verify row's numbers: `compare_outputs` with the branch maps' FP32 tolerances."""
    row = compare_outputs(reference, got, threshold_ref, threshold_got)
    for name in ("logical", "structural"):  # the fused map's tolerance comes from the calibration
        row[f"{name}_map_tolerance"] = map_tolerance(reference[name])
    return row


@dataclass
class VerifyReport:
    """What `verify_bundle` found: one row per precision and backend (the numbers of `_compare`, the image
    AUROC, the self-test and whether the row holds), and the judgement over all of them."""

    bundle: str
    run: str
    images: int
    torch_image_auroc: float | None
    rows: list[dict[str, Any]]
    fp32_parity: bool
    passed: bool
    tolerances: dict[str, float] = field(default_factory=lambda: dict(FP32_TOLERANCES))
    low_precision_limits: dict[str, float] = field(default_factory=lambda: dict(LOW_PRECISION_LIMITS))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verify_bundle(
    bundle: Path, run_dir: Path, dataset: AnomalyDataset, *, threads: int | None = None
) -> VerifyReport:
    """Run every precision of `bundle` against the torch run on `dataset.test` (or its validation): both
    through the detector interface, `RunDetector.maps` and `BundleDetector.maps` on the same pixels."""
    manifest = read_manifest(bundle)  # a damaged bundle fails here, before any work
    samples = dataset.test or dataset.validation
    pixels = np.stack([to_model_input(read_image(s.image_path), manifest.image_size) for s in samples])
    pixels = pixels.astype(np.float32)
    labels = np.array([s.label for s in samples])
    detector = RunDetector(run_dir)
    reference = detector.maps(pixels)
    rows = []
    for precision in manifest.precisions:
        backends = ["onnxruntime"] + (["tensorrt"] if precision in manifest.engines else [])
        for backend in backends:
            inspector = Inspector.open(
                bundle, backend=backend, precision=precision, threads=threads, self_test=False
            )
            with BundleDetector(inspector) as bundled:
                got = bundled.maps(pixels)
                self_test = inspector.run_self_test()
            row: dict[str, Any] = {"precision": precision, "backend": backend}
            row.update(
                _compare(reference, got, detector.calibration.threshold, inspector.calibration.threshold)
            )
            row["image_auroc"] = _auroc(labels, got["score"])
            row["fused_map_tolerance"] = fused_tolerance(detector.calibration)
            row["self_test"] = None if self_test is None else self_test.to_dict()
            rows.append(row)
    torch_auroc = _auroc(labels, reference["score"])
    for row in rows:
        row["ok"] = _row_ok(row, torch_auroc)
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    return VerifyReport(
        bundle=str(bundle),
        run=str(run_dir),
        images=len(samples),
        torch_image_auroc=torch_auroc,
        rows=rows,
        fp32_parity=bool(fp32) and all(_fp32_ok(r) for r in fp32),
        passed=all(r["ok"] for r in rows),
    )


def _row_ok(row: dict[str, Any], torch_auroc: float | None) -> bool:
    """FP32: parity with torch; FP16 / INT8: verdicts and AUROC within LOW_PRECISION_LIMITS; both: the
    self-test (when the bundle has one)."""
    if row["self_test"] is not None and not row["self_test"]["passed"]:
        return False
    if row["precision"] == "fp32":
        return _fp32_ok(row)
    auroc_ok = (
        torch_auroc is None
        or row["image_auroc"] is None
        or abs(row["image_auroc"] - torch_auroc) <= LOW_PRECISION_LIMITS["auroc_gap"]
    )
    return row["verdict_agreement"] >= LOW_PRECISION_LIMITS["verdict_agreement"] and auroc_ok


def map_tolerance(reference_map: np.ndarray) -> float:
    """What an FP32 branch map may differ by: the absolute tolerance, or the relative one of its scale."""
    scale = float(np.abs(reference_map).max()) if reference_map.size else 0.0
    return max(FP32_TOLERANCES["map_max_abs"], FP32_TOLERANCES["map_max_rel"] * scale)


def fused_tolerance(calibration) -> float:
    """The branch-map tolerance carried through Eq. 11: the fused map is each branch map scaled by w / sigma
    (sigma of normal pixels, often ~0.03 for the structural map), and smoothing only averages. A fixed 1e-4
    on the fused map would ask ~30x more of the structural map than of the maps themselves."""
    c = calibration
    scale = abs(c.weight_structural) / c.structural.std + abs(c.weight_logical) / c.logical.std
    return FP32_TOLERANCES["map_max_abs"] * scale


def _fp32_ok(row: dict[str, Any]) -> bool:
    maps_ok = all(
        row[f"{n}_map_max_abs_diff"] <= row[f"{n}_map_tolerance"] for n in ("logical", "structural")
    )
    return (
        maps_ok
        and row["fused_map_max_abs_diff"] <= row["fused_map_tolerance"]
        # Relative, or within the map tolerance for scores near 0 (fused scores are in standard deviations
        # of normal pixels and can be ~0, where a relative difference says nothing).
        and (
            row["score_max_rel_diff"] <= FP32_TOLERANCES["score_max_rel"]
            or row["score_max_abs_diff"] <= row["fused_map_tolerance"]
        )
        and row["verdict_agreement"] >= FP32_TOLERANCES["verdict_agreement"]
    )


def format_verify_table(report: VerifyReport) -> str:
    """A fixed-width table: one row per precision and backend."""
    header = (
        f"{'precision':<9} {'backend':<11} {'logical':>9} {'struct.':>9} {'fused':>9} {'score rel':>9} "
        f"{'verdicts':>8} {'AUROC':>6} {'self-test':>9} {'result':>6}"
    )
    lines = [f"{report.images} images; torch image AUROC {_fmt(report.torch_image_auroc)}", header]
    for r in report.rows:
        lines.append(
            f"{r['precision']:<9} {r['backend']:<11} {r['logical_map_max_abs_diff']:9.2e} "
            f"{r['structural_map_max_abs_diff']:9.2e} {r['fused_map_max_abs_diff']:9.2e} "
            f"{r['score_max_rel_diff']:9.2e} {r['verdict_agreement']:8.1%} {_fmt(r['image_auroc']):>6} "
            f"{_self_test_cell(r['self_test']):>9} {'ok' if r['ok'] else 'FAILS':>6}"
        )
    limits = LOW_PRECISION_LIMITS
    lines.append(
        "max abs diffs of the maps vs torch; FP32 parity "
        + ("holds" if report.fp32_parity else "FAILS")
        + f"; fp16/int8 need verdicts >= {limits['verdict_agreement']:.0%} and AUROC within "
        f"{limits['auroc_gap']} of torch; " + ("every precision passes" if report.passed else "NOT PASSED")
    )
    return "\n".join(lines)


def _self_test_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return "passed" if result["passed"] else "FAILED"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
