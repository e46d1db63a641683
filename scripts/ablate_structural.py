"""Where the structural branch wins or loses: aggregation x image-score reduction, on real images.

The structural branch needs no training, so every variant is cheap once the encoder's level-2 and
level-3 maps of the training and test images are extracted (once per encoder and image size). For each
aggregation the memory bank is built from the run's training split (`train_run`'s held-out validation
images excluded, seed 0), a 10% greedy coreset is selected (our sampler), and the test patches are searched
exactly (FAISS); each image-score reduction is then scored from the same distances. Image AUROC per subset
as `evaluate` forms them.

Aggregations (`structural.aggregation`, both from `models.structural.features.build_aggregator`):
    reference   each 3x3 neighbourhood unfolded, adaptive-pooled to P per level, levels pooled to D
                (PatchCore's reference code; `PatchFeatureAggregator`)
    local_mean  anomalib's: 3x3 average pooling of each level, level 3 upsampled bilinearly, concatenated
                (`LocalMeanAggregator`)
Image scores:
    blur-max       max of the bilinearly upsampled map after the Gaussian (sigma 4 px at 256): `evaluate`
    patch-max      max patch distance
    reweighted     anomalib's k = 9 reweighting of the max patch distance (PatchCore paper, Eq. 7)
    nearest-blur   anomalib's map: nearest upsampling, Gaussian, max

Usage:
    python scripts/ablate_structural.py --data ../shared/data/magnetic_tile --normal-dir MT_Free/Imgs \
        --abnormal-dir blowhole=MT_Blowhole/Imgs --abnormal-dir crack=MT_Crack/Imgs --lite 2 --json
    python scripts/ablate_structural.py --data data/s0 --lite 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from npgmf_edge.data import load_dataset, read_image
from npgmf_edge.metrics import image_auroc
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.structural.features import build_aggregator
from npgmf_edge.models.structural.sampler import GreedyCoresetSampler
from npgmf_edge.postprocess import gaussian_sigma_for, smooth
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.training.run import with_validation_split

NEIGHBOURS = 9


def encoder_maps(lite: int, size: int, paths: list[Path], batch: int = 8) -> list[torch.Tensor]:
    """[level 2 (N, C2, h, w), level 3 (N, C3, h/2, w/2)] of the Lite encoder with its ImageNet weights."""
    enc = FrozenEncoder(f"tf_efficientnet_lite{lite}", (2, 3), True, weights=f"efficientnet-lite{lite}")
    out: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            pixels = np.stack([to_model_input(read_image(p), size) for p in paths[start : start + batch]])
            for level, f in zip(out, enc(torch.from_numpy(pixels)), strict=True):
                level.append(f)
    return [torch.cat(level) for level in out]


def aggregate(name: str, maps: list[torch.Tensor], dims: tuple[int, int], batch: int = 16) -> torch.Tensor:
    f2, f3 = maps
    agg = build_aggregator(name, [f2.shape[1], f3.shape[1]], *dims, patch_size=3)
    with torch.no_grad():
        return torch.cat([agg([f2[i : i + batch], f3[i : i + batch]]) for i in range(0, len(f2), batch)])


def image_scores(
    name: str, dist: np.ndarray, nearest: np.ndarray, queries: np.ndarray, coreset: np.ndarray, size: int
) -> np.ndarray:
    """(N,) image scores from patch distances (N, h, w) and each patch's nearest coreset row."""
    n = len(dist)
    if name == "patch-max":
        return dist.reshape(n, -1).max(axis=1)
    if name == "reweighted":
        flat = dist.reshape(n, -1)
        best = flat.argmax(axis=1)
        score = flat[np.arange(n), best]
        index = faiss.IndexFlatL2(coreset.shape[1])
        index.add(coreset)
        anchors = coreset[nearest.reshape(n, -1)[np.arange(n), best]]
        _, support = index.search(anchors, NEIGHBOURS)  # the nearest row's own neighbours in the coreset
        feats = queries.reshape(n, -1, coreset.shape[1])[np.arange(n), best]
        d = np.linalg.norm(coreset[support] - feats[:, None, :], axis=-1)
        soft = np.exp(d - d.max(axis=1, keepdims=True))
        return (1.0 - soft[:, 0] / soft.sum(axis=1)) * score
    mode = "bilinear" if name == "blur-max" else "nearest"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(torch.from_numpy(dist)[:, None], size=(size, size), mode=mode, **kwargs)[:, 0].numpy()
    return smooth(up, gaussian_sigma_for(size, 4.0)).reshape(n, -1).max(axis=1)


def subsets(dataset) -> dict[str, np.ndarray]:
    labels = np.array([s.label for s in dataset.test])
    types = np.array([s.defect_type for s in dataset.test])
    if not dataset.defects_config:
        return {"all": np.ones(len(labels), bool)}
    return {t: (labels == 0) | (types == t) for t in sorted(set(types[labels == 1]))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--normal-dir", default=None)
    parser.add_argument("--abnormal-dir", action="append", default=[])
    parser.add_argument("--lite", type=int, nargs="+", default=[2])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--aggregations", nargs="+", default=["reference", "local_mean"])
    parser.add_argument("--dims", type=int, nargs=2, default=[256, 256], help="reference: P and D")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    options = {}
    if args.normal_dir:
        options["normal_dir"] = args.normal_dir
        options["abnormal_dirs"] = dict(item.split("=", 1) for item in args.abnormal_dir)
    dataset = with_validation_split(load_dataset(args.data, **options), 0.1, 0)
    labels = np.array([s.label for s in dataset.test])
    rows = []
    for lite in args.lite:
        tick = time.perf_counter()
        train_maps = encoder_maps(lite, args.image_size, [s.image_path for s in dataset.train])
        test_maps = encoder_maps(lite, args.image_size, [s.image_path for s in dataset.test])
        seconds_encoder = time.perf_counter() - tick
        for agg in args.aggregations:
            tick = time.perf_counter()
            train = aggregate(agg, train_maps, tuple(args.dims))
            test = aggregate(agg, test_maps, tuple(args.dims))
            n, d, h, w = test.shape
            bank = train.permute(0, 2, 3, 1).reshape(-1, d).contiguous()
            coreset = GreedyCoresetSampler(args.ratio, 128, seed=0).run(bank).numpy()
            queries = np.ascontiguousarray(test.permute(0, 2, 3, 1).reshape(-1, d).numpy())
            index = faiss.IndexFlatL2(d)
            index.add(coreset)
            sq, nearest = index.search(queries, 1)
            dist = np.sqrt(np.maximum(sq[:, 0], 0)).reshape(n, h, w)
            seconds = round(time.perf_counter() - tick + seconds_encoder, 1)
            row = {"lite": lite, "aggregation": agg, "dim": d, "coreset": len(coreset), "seconds": seconds}
            row["auroc"] = {}
            for score in ("blur-max", "patch-max", "reweighted", "nearest-blur"):
                s = image_scores(score, dist, nearest[:, 0], queries, coreset, args.image_size)
                row["auroc"][score] = {
                    k: round(image_auroc(labels[m], s[m]), 4) for k, m in subsets(dataset).items()
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
