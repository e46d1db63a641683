"""Time AUC-sPRO (and AUPRO, pixel AUROC) on a synthetic test set the size of MVTec LOCO AD's.

Random float32 maps with 1-3 random elliptical defects per anomalous image, each raised by a random
offset (so the curves bend like a real detector's); a third of the images are good,
the rest split between two subsets like LOCO's logical and structural anomalies; half the defect types
saturate relatively, half absolutely. Prints one line per measurement.

    python scripts/bench_spro.py                       # 2000 images at 256 px (docs/BENCHMARKS.md)
    python scripts/bench_spro.py --images 300 --check-adaptive 0.001

`--check-adaptive D` also runs a re-implementation of the official script's adaptive threshold refinement
(50 equi-height initial thresholds, then insert thresholds where neighbouring curve points are more than D
apart, 20..100 per step, at most 10 steps) and prints its largest difference from the exact areas.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from npgmf_edge.metrics import (
    MAX_FPRS,
    SaturatedRegion,
    auc_spro,
    aupro,
    normalized_area,
    pixel_auroc,
)
from npgmf_edge.metrics.spro import rank_scores

# (relative?, threshold) per defect type, like a defects_config.json
DEFECT_TYPES = ((True, 1.0), (True, 0.5), (False, 400), (False, 2000))


def synthetic_set(n_images: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    maps, defects, subsets = [], [], []
    for index in range(n_images):
        maps.append(rng.random((size, size), dtype=np.float32))
        subset = index % 3  # 0 good, 1 "logical", 2 "structural"
        regions = []
        for _ in range(rng.integers(1, 4) if subset else 0):
            mask = np.zeros((size, size), dtype=np.uint8)
            center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (int(rng.integers(2, size // 6)), int(rng.integers(2, size // 6)))
            cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
            inside = mask.astype(bool)
            relative, threshold = DEFECT_TYPES[int(rng.integers(len(DEFECT_TYPES)))]
            area = int(inside.sum())
            saturation = int(threshold * area) if relative else min(int(threshold), area)
            regions.append(SaturatedRegion(inside, saturation))
            maps[-1][inside] += rng.uniform(0.0, 1.0)  # some defects stand out, some do not: a curved curve
        defects.append(regions)
        subsets.append(subset)
    return maps, defects, subsets


def adaptive_areas(maps, defects, max_distance: float, seed: int = 0) -> dict[float, float]:
    """The official refinement scheme, evaluated on our exact per-threshold counts."""
    ranked = rank_scores(maps, [[(r.mask, r.saturation_area) for r in image] for image in defects])
    rng = np.random.default_rng(seed)

    def points(thresholds: np.ndarray) -> np.ndarray:
        fprs = ranked.count_negatives_above(thresholds) / ranked.negatives.size
        return np.stack([ranked.weight_above(thresholds), fprs], axis=1)

    per_image = min(maps[0].size, 10_000_000 // len(maps))
    sample = np.sort(np.concatenate([rng.choice(m.ravel(), per_image, replace=False) for m in maps]))
    low = min(float(m.min()) for m in maps) - 1e-6
    high = max(float(m.max()) for m in maps) + 1e-6
    inner = sample[np.linspace(0, sample.size - 1, 50, dtype=int)[1:-1]].astype(np.float64)
    thresholds = np.unique(np.concatenate(([low, high], inner)))[::-1]
    values = points(thresholds)
    for _ in range(10):
        gaps = np.linalg.norm(np.diff(values, axis=0), axis=1)
        candidates = np.flatnonzero(gaps > max_distance)
        if candidates.size == 0:
            break
        candidates = candidates[np.argsort(gaps[candidates])[::-1]][:100]
        remaining, total = max(20 - candidates.size, 0), float(gaps[candidates].sum())
        queries = []
        for i in candidates:
            extra = int(np.round(gaps[i] / total * remaining))
            queries.extend(np.linspace(thresholds[i], thresholds[i + 1], 3 + extra)[1:-1])
            remaining, total = remaining - extra, total - gaps[i]
        thresholds = np.concatenate((thresholds, queries))
        order = np.argsort(thresholds)[::-1]
        thresholds = thresholds[order]
        values = np.concatenate((values, points(np.asarray(queries))))[order]
    spros, fprs = values[:, 0], values[:, 1]
    return {limit: normalized_area(fprs, spros, limit) for limit in MAX_FPRS}


def timed(label: str, function):
    start = time.perf_counter()
    result = function()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-adaptive", type=float, default=None, metavar="MAX_DISTANCE")
    args = parser.parse_args()

    maps, defects, subsets = timed(
        f"generate {args.images} maps at {args.size} px",
        lambda: synthetic_set(args.images, args.size, args.seed),
    )
    n_regions = sum(len(d) for d in defects)
    print(f"{n_regions} defect regions, {sum(s > 0 for s in subsets)} anomalous images")

    def subset(k: int):
        keep = [i for i, s in enumerate(subsets) if s in (0, k)]
        return [maps[i] for i in keep], [defects[i] for i in keep]

    def loco_evaluation():
        per_subset = [auc_spro(*subset(k)) for k in (1, 2)]
        return {limit: 0.5 * (per_subset[0][limit] + per_subset[1][limit]) for limit in MAX_FPRS}

    mean = timed("AUC-sPRO, LOCO style (2 subsets, each with all good images, and mean)", loco_evaluation)
    print("  mean AUC-sPRO:", {k: round(v, 4) for k, v in mean.items()})
    exact = timed("AUC-sPRO, all images in one set", lambda: auc_spro(maps, defects))
    masks = [np.logical_or.reduce([r.mask for r in d]) if d else None for d in defects]
    timed("AUPRO@0.3, all images", lambda: aupro(maps, masks))
    timed("pixel AUROC, all images", lambda: pixel_auroc(maps, masks))
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")

    if args.check_adaptive is not None:
        adaptive = timed(
            "official-style adaptive refinement", lambda: adaptive_areas(maps, defects, args.check_adaptive)
        )
        for limit in MAX_FPRS:
            print(f"  limit {limit}: exact {exact[limit]:.6f}  adaptive {adaptive[limit]:.6f}")
        print(f"max |exact - adaptive| = {max(abs(exact[k] - adaptive[k]) for k in MAX_FPRS):.2e}")


if __name__ == "__main__":
    main()
