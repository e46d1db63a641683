"""Greedy k-center coreset on a ~100k x 1536 memory bank: our sampler vs the plain per-pick loop.

Both run in one process on the same bank, the same random projection and the same selection rule
(`GreedyCoresetSampler` vs `LoopGreedyCoresetSampler`, see npgmf_edge/models/structural/sampler.py), and
the picks are compared index by index. The bank is real: PatchCore features (anomalib layout: levels 2+3,
3x3 average, level 3 upsampled, concatenated -> 512 + 1024 = 1536 dims) of a random-init
wide_resnet50_2 (no pretrained weights offline) on 100 magnetic-tile images at 256 px = 100 x 32 x 32 =
102,400 patches. `--bank gaussian` uses i.i.d. Gaussian rows instead: the worst case for the pruning.

Usage:
    python scripts/bench_coreset.py --out bench_coreset.json          # ~10 minutes on 2 cores
    python scripts/bench_coreset.py --skip-loop                        # ours only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from npgmf_edge.data import read_image
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.structural.sampler import (
    GreedyCoresetSampler,
    LoopGreedyCoresetSampler,
    random_projection,
)
from npgmf_edge.preprocess import to_model_input

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile/MT_Free/Imgs"


@torch.no_grad()
def real_bank(data: Path, n_images: int, image_size: int, encoder_name: str, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    encoder = FrozenEncoder(encoder_name, out_indices=(2, 3), pretrained=False)
    files = sorted(data.glob("*.jpg"))[:n_images]
    if len(files) < n_images:
        raise SystemExit(f"need {n_images} images in {data}, found {len(files)}")
    rows = []
    for start in range(0, len(files), 10):
        pixels = torch.from_numpy(
            np.stack([to_model_input(read_image(f), image_size) for f in files[start : start + 10]])
        )
        f2, f3 = (F.avg_pool2d(f, 3, 1, 1) for f in encoder(pixels))
        f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([f2, f3], dim=1)
        rows.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    return torch.cat(rows)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bank", choices=["real", "gaussian"], default="real")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--encoder", default="wide_resnet50_2")
    parser.add_argument("--cache", type=Path, default=None, help="reuse/write the bank as .npy here")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-loop", action="store_true", help="time our sampler only")
    parser.add_argument("--loop-sample-picks", type=int, default=300, help="picks timed at default threads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    result: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_start": load_average(),
        }
    }
    tick = time.perf_counter()
    if args.cache is not None and args.cache.is_file():
        bank = torch.from_numpy(np.load(args.cache))
    elif args.bank == "gaussian":
        rows = args.images * (args.image_size // 8) ** 2
        bank = torch.randn(rows, 1536, generator=torch.Generator().manual_seed(args.seed))
    else:
        bank = real_bank(args.data, args.images, args.image_size, args.encoder, args.seed)
    if args.cache is not None and not args.cache.is_file():
        np.save(args.cache, bank.numpy())
    built = time.perf_counter() - tick
    result["bank"] = {"kind": args.bank, "shape": list(bank.shape), "seconds_to_build": built}
    print(f"bank {tuple(bank.shape)} ({args.bank}) in {result['bank']['seconds_to_build']:.1f} s", flush=True)

    tick = time.perf_counter()
    random_projection(bank, args.projection_dim, args.seed)
    result["seconds_projection"] = time.perf_counter() - tick

    ours = GreedyCoresetSampler(args.ratio, args.projection_dim, args.seed, progress=True)
    tick = time.perf_counter()
    picks = ours.select(bank)
    result["ours"] = {"seconds": time.perf_counter() - tick, "picks": len(picks)}
    print(f"ours: {len(picks)} picks in {result['ours']['seconds']:.1f} s", flush=True)

    if not args.skip_loop:
        # Same settings as ours (one torch thread in the pick loop: the loop's fastest setting here too).
        loop = LoopGreedyCoresetSampler(args.ratio, args.projection_dim, args.seed, progress=True)
        tick = time.perf_counter()
        reference = loop.select(bank)
        result["loop"] = {"seconds": time.perf_counter() - tick, "picks": len(reference)}
        # The loop with torch's default threads, timed on its first picks (its cost per pick is constant).
        projected = random_projection(bank, args.projection_dim, args.seed)
        tick = time.perf_counter()
        loop._greedy_indices(projected, args.loop_sample_picks, 0)
        per_pick = (time.perf_counter() - tick) / args.loop_sample_picks
        result["loop_default_threads_estimate"] = {
            "torch_threads": torch.get_num_threads(),
            "seconds_per_pick": per_pick,
            "seconds_extrapolated": per_pick * len(reference),
        }
        same = picks == reference
        result["identical_picks"] = bool(same.all())
        result["first_difference"] = None if same.all() else int((~same).nonzero()[0, 0])
        result["speedup"] = result["loop"]["seconds"] / result["ours"]["seconds"]
        print(
            f"loop: {result['loop']['seconds']:.1f} s; speedup {result['speedup']:.1f}x; "
            f"identical picks: {result['identical_picks']}",
            flush=True,
        )
    result["machine"]["load_average_end"] = load_average()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
