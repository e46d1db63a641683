"""A bundle proves itself on the machine that opens it: a golden set run at `Inspector.open`.

The export stores a few validation images (uint8, at the model's input size) in `selftest.npz`, and in
the manifest, for each precision, the image scores the export machine's onnxruntime computed for them,
a tolerance, and that machine's CPU features and backend versions (`platform_facts`). The npz also
holds a digest of each precision's fused maps (mean-pooled to DIGEST_GRID x DIGEST_GRID). A station
opening a precision runs the same images through the backend it chose and compares: scores and digests
farther than the tolerance from the export machine's mean the arithmetic differs here (INT8 kernels
that saturate, another TensorRT, a damaged install), and the precision is refused rather than trusted.

Tolerances are in the fused map's units (standard deviations of normal pixels, Eq. 11):
    fp32: FP32_TOLERANCE (float rounding differs between kernels and ISAs by far less);
    fp16, int8: TOLERANCE_FLOOR + DRIFT_FACTOR x how far that precision is from FP32 on these images at
    export: another correct implementation lands about as close to FP32 as this one. FP16's floor is the
    larger because onnxruntime's CPU provider only stores FP16 (it computes in FP32), while TensorRT
    computes in it; INT8's integers are the same everywhere (7-bit weights), only its float parts differ.
Saturated INT8 products moved the demo's scores by several units: far outside every tolerance.

Example:
    >>> result = run_self_test(inspector)       # None for a bundle exported without a golden set
    >>> result.passed, result.score_drift, result.tolerance
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import platform_facts
from npgmf_edge.runtime.backends.base import BackendError

if TYPE_CHECKING:
    from npgmf_edge.runtime.inspector import Inspector

SELFTEST_FILE = "selftest.npz"
GOLDEN_IMAGES = 4
DIGEST_GRID = 8
FP32_TOLERANCE = 0.01
TOLERANCE_FLOOR = {"fp16": 0.1, "int8": 0.05}
DRIFT_FACTOR = 2.0


class SelfTestError(BundleError):
    """A precision of a bundle gives other numbers here than on the export machine."""


@dataclass(frozen=True)
class SelfTestResult:
    precision: str
    backend: str  # what computed it here: `Backend.describe()`
    images: int
    score_drift: float  # max |score here - score at export|
    map_drift: float  # max |digest here - digest at export|
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        # A NaN drift (non-finite output) fails: comparisons with NaN are False.
        return bool(self.score_drift <= self.tolerance and self.map_drift <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "backend": self.backend,
            "images": self.images,
            "score_drift": self.score_drift,
            "map_drift": self.map_drift,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "seconds": round(self.seconds, 4),
        }


def choose_golden(scores: np.ndarray, count: int = GOLDEN_IMAGES) -> np.ndarray:
    """Indices of `count` images spread over the FP32 score range, the highest included (the one nearest
    the verdict threshold on normal images)."""
    order = np.argsort(scores, kind="stable")
    picks = np.linspace(0, len(order) - 1, num=min(count, len(order))).round().astype(int)
    return np.sort(order[np.unique(picks)])


def map_digest(fused: np.ndarray) -> np.ndarray:
    """(B, S, S) fused maps -> (B, DIGEST_GRID, DIGEST_GRID) block means: where a map changed, not only
    how its maximum did."""
    grid = (DIGEST_GRID, DIGEST_GRID)
    return np.stack([cv2.resize(m.astype(np.float32), grid, interpolation=cv2.INTER_AREA) for m in fused])


def golden_outputs(inspector: Inspector, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and map digests of uint8 (N, 3, S, S) `pixels`, in the bundle's batch size."""
    scores, digests = [], []
    step = inspector.manifest.max_batch
    for start in range(0, len(pixels), step):
        out = inspector.run(pixels[start : start + step].astype(np.float32))
        scores.append(np.asarray(out["score"], dtype=np.float64))
        digests.append(map_digest(out["fused"]))
    return np.concatenate(scores), np.concatenate(digests)


def tolerance_for(precision: str, scores: np.ndarray, fp32_scores: np.ndarray) -> float:
    if precision == "fp32":
        return FP32_TOLERANCE
    return float(TOLERANCE_FLOOR[precision] + DRIFT_FACTOR * np.abs(scores - fp32_scores).max())


def write_golden(root: Path, pixels: np.ndarray, digests: dict[str, np.ndarray]) -> Path:
    """selftest.npz in the bundle folder `root`: the images and each precision's map digests."""
    arrays = {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)}
    arrays.update({f"digest_{p}": d.astype(np.float32) for p, d in digests.items()})
    path = Path(root) / SELFTEST_FILE
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def expectations(
    scores: dict[str, np.ndarray], fp32: np.ndarray, images: int, machine: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest's `selftest` entry: per precision its scores and tolerance (from its distance to the
    FP32 run's scores `fp32`, stored as `reference` so a reader can bound each tolerance), and the export
    machine."""
    return {
        "file": SELFTEST_FILE,
        "images": images,
        "digest_grid": DIGEST_GRID,
        "reference": np.asarray(fp32, dtype=np.float64).tolist(),
        "precisions": {
            p: {"scores": s.tolist(), "tolerance": tolerance_for(p, s, fp32)} for p, s in scores.items()
        },
        "machine": machine or platform_facts.machine_facts(),
    }


def run_self_test(inspector: Inspector) -> SelfTestResult | None:
    """Run the golden set through `inspector`; None when the bundle has none (exported before it existed)."""
    entry = inspector.manifest.raw.get("selftest")
    if not entry or inspector.precision not in entry["precisions"]:
        return None
    expected = entry["precisions"][inspector.precision]
    try:
        with np.load(inspector.manifest.root / entry["file"]) as golden:
            pixels = golden["pixels"]
            expected_digest = golden[f"digest_{inspector.precision}"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(
            f"{inspector.manifest.root / entry['file']}: cannot read the self-test images ({exc}); re-export"
        ) from exc
    tick = time.perf_counter()
    try:
        scores, digests = golden_outputs(inspector, pixels)
    except BackendError as exc:  # the golden images do not fit the graph the manifest describes
        raise BundleError(
            f"{inspector.manifest.root}: the {inspector.precision} self-test cannot run ({exc}); re-export"
        ) from exc
    seconds = time.perf_counter() - tick
    return SelfTestResult(
        precision=inspector.precision,
        backend=inspector.backend.describe(),
        images=len(pixels),
        score_drift=_max_abs(scores - np.asarray(expected["scores"])),
        map_drift=_max_abs(digests - expected_digest),
        tolerance=float(expected["tolerance"]),
        seconds=seconds,
    )


def _max_abs(diff: np.ndarray) -> float:
    diff = np.abs(diff)
    return float("nan") if not np.isfinite(diff).all() else float(diff.max(initial=0.0))


def failure_message(result: SelfTestResult, inspector: Inspector) -> str:
    """One line: which precision, by how much, what computed it here and at export, what to do."""
    manifest = inspector.manifest
    exported_on = platform_facts.describe(manifest.raw["selftest"].get("machine", {}))
    here = platform_facts.describe(platform_facts.machine_facts())
    other = next((p for p in manifest.precisions if p != result.precision), None)
    advice = (
        f"open it with --precision {other}, or pass --fallback {other} to answer in {other} when "
        f"{result.precision} fails here"
        if other
        else "re-export the bundle on a machine like this one"
    )
    return (
        f"{manifest.root}: the {result.precision} graph fails its self-test on this machine: scores drift "
        f"by {result.score_drift:.4g} and maps by {result.map_drift:.4g} from the export machine's "
        f"(tolerance {result.tolerance:.4g}) with {result.backend} on {here}; exported on {exported_on}; "
        f"{advice}"
    )


def self_test_bundle(
    bundle: Path, backend: str = "auto", device: str = "cpu", trust: Path | None = None
) -> dict[str, Any]:
    """`npgmf-edge verify BUNDLE` on a station: each precision's self-test here, with this machine's facts
    (with `trust`, first the bundle's signature by one of those keys)."""
    from npgmf_edge.runtime.inspector import Inspector
    from npgmf_edge.runtime.manifest import read_manifest

    rows = []
    manifest = read_manifest(Path(bundle), trust=trust)
    for precision in manifest.precisions:
        with Inspector.open(bundle, backend, device, precision, self_test=False, trust=trust) as inspector:
            result = run_self_test(inspector)
            rows.append(
                {"precision": precision, "backend": inspector.backend.describe(), "passed": None}
                if result is None
                else result.to_dict()
            )
            if result is not None and not result.passed:
                rows[-1]["message"] = failure_message(result, inspector)
    entry = manifest.raw.get("selftest") or {}
    return {
        "bundle": str(bundle),
        "machine": platform_facts.machine_facts(),
        "export_machine": entry.get("machine"),
        "rows": rows,
        "passed": all(row["passed"] is not False for row in rows),
    }


def format_self_test_table(report: dict[str, Any]) -> str:
    lines = [
        f"self-test of {report['bundle']} on {platform_facts.describe(report['machine'])}",
        f"exported on {platform_facts.describe(report['export_machine'] or {})}",
        f"{'precision':<9} {'result':<8} {'score drift':>11} {'map drift':>10} {'tolerance':>9} "
        f"{'seconds':>8}  backend",
    ]
    for row in report["rows"]:
        if row["passed"] is None:
            lines.append(
                f"{row['precision']:<9} {'no set':<8} (exported without a self-test)  {row['backend']}"
            )
            continue
        lines.append(
            f"{row['precision']:<9} {'ok' if row['passed'] else 'FAILS':<8} {row['score_drift']:11.3g} "
            f"{row['map_drift']:10.3g} {row['tolerance']:9.3g} {row['seconds']:8.3f}  {row['backend']}"
        )
    lines.extend(row["message"] for row in report["rows"] if "message" in row)
    return "\n".join(lines)
