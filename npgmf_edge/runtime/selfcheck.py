"""Runs a bundle's golden set (`runtime.selftest`) here and judges it against the FP32 reference its
manifest stores. It needs only a callable that runs the graph (`Inspector.run`), so the inspector imports
this module and not the reverse. Example: `run_self_test(manifest, "int8", inspector.run, "onnxruntime")`
-> SelfTestResult (`.passed`, `.score_error`, `.budget`), or None for a bundle without a golden set."""

from __future__ import annotations

import time

import numpy as np

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime import platform_facts
from npgmf_edge.runtime.backends.base import BackendError
from npgmf_edge.runtime.manifest import Manifest
from npgmf_edge.runtime.selftest import (
    DIGEST_GRID,
    RunGraph,
    SelfTestResult,
    golden_outputs,
    load_golden,
    score_error,
    verdict_flips,
)


def run_self_test(manifest: Manifest, precision: str, run: RunGraph, backend: str) -> SelfTestResult | None:
    """Run the bundle's golden set through `run` (the `precision` graph and everything after it; `backend`
    says what computes it); None when the bundle has none (exported before it existed)."""
    entry = manifest.raw.get("selftest")
    if not entry or precision not in entry["precisions"]:
        return None
    expected = entry["precisions"][precision]
    root = manifest.root
    try:
        pixels, reference_maps = load_golden(root, entry)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{root}: cannot read the self-test images ({exc}); re-export") from exc
    images = int(entry["images"])
    size = manifest.image_size
    if (
        pixels.dtype != np.uint8
        or pixels.shape != (images, 3, size, size)
        or (reference_maps is not None and reference_maps.shape != (images, DIGEST_GRID, DIGEST_GRID))
    ):
        raise BundleError(
            f"{root}: the self-test files hold {pixels.dtype} {list(pixels.shape)} images, not {images} "
            f"uint8 images of [3, {size}, {size}] with their {DIGEST_GRID} x {DIGEST_GRID} digests; re-export"
        )
    tick = time.perf_counter()
    try:
        scores, digests = golden_outputs(run, pixels, manifest.max_batch)
    except BackendError as exc:  # the golden images do not fit the graph the manifest describes
        raise BundleError(f"{root}: the {precision} self-test cannot run ({exc}); re-export") from exc
    seconds = time.perf_counter() - tick
    reference = np.asarray(entry["reference"], dtype=np.float64)
    use_maps = reference_maps is not None and expected.get("map_budget") is not None
    threshold = manifest.calibration[precision].threshold
    use_flips = entry.get("reference_threshold") is not None
    spread = np.abs(scores - np.asarray(expected["scores"]))
    return SelfTestResult(
        precision=precision,
        backend=backend,
        images=len(pixels),
        score_error=score_error(scores, reference),
        budget=float(expected["budget"]),
        map_error=score_error(digests, reference_maps) if use_maps else None,
        map_budget=float(expected["map_budget"]) if use_maps else None,
        verdict_flips=verdict_flips(scores, threshold, reference, entry["reference_threshold"])
        if use_flips
        else None,
        max_flips=int(expected["max_flips"]) if use_flips else None,
        spread=float(spread.max()) if np.isfinite(spread).all() else float("nan"),
        seconds=seconds,
    )


def failure_message(result: SelfTestResult, manifest: Manifest) -> str:
    """One line: which precision, by how much, what computed it here and at export, what to do."""
    exported_on = platform_facts.describe(manifest.raw["selftest"].get("machine", {}))
    here = platform_facts.describe(platform_facts.machine_facts())
    other = next((p for p in manifest.precisions if p != result.precision), None)
    advice = (
        f"open it with --precision {other}, or pass --fallback {other} to answer in {other} when "
        f"{result.precision} fails here"
        if other
        else "re-export the bundle on a machine like this one"
    )
    maps = flips = ""
    if result.map_error is not None:
        maps = f", maps by {result.map_error:.4g} (budget {result.map_budget:.4g})"
    if result.verdict_flips is not None:
        flips = f", {result.verdict_flips} of {result.images} verdicts differ from FP32's "
        flips += f"(at most {result.max_flips})"
    return (
        f"{manifest.root}: the {result.precision} graph fails its self-test on this machine: its scores are "
        f"{result.score_error:.4g} from FP32's on average (budget {result.budget:.4g}){maps}{flips}, with "
        f"{result.backend} on {here}; exported on {exported_on}; {advice}"
    )
