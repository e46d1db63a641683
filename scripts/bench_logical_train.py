"""Measure logical-branch training on this CPU: seconds per epoch and peak memory (RSS).

Generates the default make-data set (seed 0: 60 training images) unless --data is given, trains the
chosen preset with random weights (no downloads) on the first --images training images for --epochs
epochs through `train_logical` itself, and prints one JSON line. Time per epoch excludes the checkpoint
write, which is reported separately; with --images below the set size, the per-epoch time for the full
set is extrapolated linearly from the measured time per iteration (stated in the output).

    python scripts/bench_logical_train.py --preset tiny --epochs 2
    python scripts/bench_logical_train.py --preset edge --images 12 --epochs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.training.logical import train_logical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data", type=Path, help="dataset root (default: generate the make-data set)")
    parser.add_argument("--images", type=int, help="train on the first N training images only")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(generate_dataset(Path(tmp) / "data", SyntheticConfig(seed=0))["dataset"])
        dataset = load_dataset(root)
        full_set = len(dataset.train)
        if args.images:
            dataset = dataclasses.replace(dataset, train=dataset.train[: args.images])
        cfg = get_preset(args.preset)
        cfg.weights.pretrained = False
        cfg.train.epochs = args.epochs
        cfg.logical.prompt = dataset.category.replace("_", " ")
        start = time.perf_counter()
        summary = train_logical(dataset, cfg, Path(tmp) / "logical", progress=False)
        wall = time.perf_counter() - start
        ckpt_mib = (Path(tmp) / "logical" / "checkpoint.safetensors").stat().st_size / 2**20

    n, bs = len(dataset.train), cfg.train.batch_size
    iterations = math.ceil(n / bs)
    per_epoch = summary["seconds_per_epoch"]
    result = {
        "preset": args.preset,
        "encoder": cfg.logical.encoder,
        "image_size": cfg.image_size,
        "batch_size": bs,
        "threads": args.threads,
        "images_trained": n,
        "epochs": args.epochs,
        "seconds_per_epoch_measured": round(per_epoch, 2),
        "seconds_per_iteration": round(per_epoch / iterations, 3),
        "seconds_per_epoch_full_set": round(per_epoch / iterations * math.ceil(full_set / bs), 1),
        "full_set_images": full_set,
        "extrapolated": n < full_set,
        "wall_seconds_total": round(wall, 1),
        "checkpoint_mib": round(ckpt_mib, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_curve": [round(x, 4) for x in summary["loss_curve"]],
        "torch": torch.__version__,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
