"""How many epochs the logical branch needs: its test image AUROC after every epoch, and where early
stopping would have stopped, watching the validation loss or the pseudo-anomaly AUROC.

Trains one preset's logical branch to its cap (`--epochs`, default the preset's) with early stopping off,
measuring after each epoch its validation loss (what early stopping watches) and its image AUROC on the
test split (score = max of the smoothed logical map, as `evaluate` scores a branch). Training is
deterministic and the stopping rule a pure function of the validation losses, so replaying the rule over
the recorded losses gives exactly the epoch a run with early stopping stops at and the weights it keeps
(the cosine learning-rate schedule depends on the cap only). Prints one JSON document: the per-epoch
curve, the cap's AUROC, the first epoch within `--tolerance` of it, and the early-stopping outcome for the
preset's rule and a few other patiences, watching either signal (`train.stop_on`; both are recorded
every epoch). `--run-out DIR` trains the whole run there instead (structural branch and calibration
too, kept for `scripts/bench_fusion.py`; make-data is then generated into DIR_data). Wall and CPU time
(this process's, less sensitive to other load on a shared machine) count training and validation up to
an epoch (model build and image decoding included), not the test-set evaluation this script adds.

    python scripts/bench_convergence.py --preset tiny --make-data-seed 0
    python scripts/bench_convergence.py --preset tiny --magnetic-tile [PATH] --run-out runs/mt
    # another configuration of a preset: its encoder, input size or any field
    python scripts/bench_convergence.py --preset edge --lite 0 --image-size 128 --set logical.window_size=4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from npgmf_edge.config import NpgmfConfig, get_preset
from npgmf_edge.data import AnomalyDataset, load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.errors import ConfigError
from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet
from npgmf_edge.postprocess import gaussian_sigma_for, image_scores, smooth
from npgmf_edge.training.early_stopping import decide
from npgmf_edge.training.images import ImageTensorDataset
from npgmf_edge.training.logical import train_logical
from npgmf_edge.training.run import train_run, with_validation_split

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile"
MT_DEFECTS = {"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"}
PATIENCES = (3, 5, 8, 10)


def logical_auroc(
    net: NpgmfLogicalNet, images: ImageTensorDataset, labels: np.ndarray, sigma: float
) -> float:
    """Image AUROC of the logical branch alone on the test images (max of the smoothed map)."""
    maps = []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            batch = torch.stack([images[i] for i in range(start, min(start + 16, len(images)))])
            maps.append(net(batch)[:, 0].numpy())
    return float(roc_auc_score(labels, image_scores(smooth(np.concatenate(maps), sigma))))


def stopping(
    curve: list[dict[str, Any]], patience: int, min_delta: float, cap: int, stop_on: str = "validation_loss"
) -> dict[str, Any]:
    """Where the rule stops on the recorded signal (as `training.logical` feeds it: the validation loss, or
    1 - the pseudo-anomaly AUROC), the epoch it keeps and that epoch's test AUROC."""
    values = [np.nan if c[stop_on] is None else c[stop_on] for c in curve]
    losses = [1.0 - v for v in values] if stop_on == "pseudo_auroc" else values
    for stop in range(1, len(losses) + 1):
        decision = decide(losses[:stop], patience=patience, min_delta=min_delta, max_epochs=cap)
        if decision.stop:
            break
    best = decision.best_epoch
    return {
        "stop_on": stop_on,
        "patience": patience,
        "min_delta": min_delta,
        "stopped_after_epoch": stop,
        "reason": decision.reason,
        "best_epoch": best,
        "auroc": curve[best - 1]["auroc"],
        "wall_s": curve[stop - 1]["wall_s"],
        "cpu_s": curve[stop - 1]["cpu_s"],
    }


def override(cfg: NpgmfConfig, items: list[str]) -> NpgmfConfig:
    """`cfg` with each SECTION.FIELD=JSON of `items` set, through the config's own loader (unknown names
    and wrong types refused as a saved config.json's would be)."""
    data = cfg.to_dict()
    for item in items:
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        if not isinstance(data.get(section), dict):
            raise SystemExit(f"--set {item}: no config section {section!r}")
        data[section][name] = json.loads(raw)
    try:
        return NpgmfConfig.from_dict(data)
    except ConfigError as exc:
        raise SystemExit(f"--set: {exc}") from None


def dataset_for(args: argparse.Namespace, work: Path) -> AnomalyDataset:
    if args.magnetic_tile:
        return load_dataset(
            args.magnetic_tile, format="folder", normal_dir="MT_Free/Imgs", abnormal_dirs=MT_DEFECTS, seed=0
        )
    where = Path(f"{args.run_out}_data") if args.run_out else work / "data"
    config = SyntheticConfig(seed=args.make_data_seed)
    if args.resume and (where / config.category).is_dir():  # generated by the run being resumed
        return load_dataset(where / config.category)
    return load_dataset(generate_dataset(where, config)["dataset"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--make-data-seed", type=int, default=0, help="generate the make-data set (default)")
    source.add_argument(
        "--magnetic-tile",
        nargs="?",
        const=MAGNETIC_TILE,
        type=Path,
        help=f"the magnetic-tile set, read in place (default {MAGNETIC_TILE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--lite", type=int, choices=[0, 1, 2], help="both encoders Lite N (default: the preset's)"
    )
    parser.add_argument("--image-size", type=int, help="input size (default: the preset's)")
    parser.add_argument("--epochs", type=int, help="the cap (default: the preset's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="override one config field, e.g. logical.window_size=4 (repeat)",
    )
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run-out", type=Path, help="train the whole run into this folder and keep it")
    parser.add_argument(
        "--stop-on",
        choices=("validation_loss", "pseudo_auroc"),
        help="with --run-out: early stopping on, watching this (default: off, the rule replayed)",
    )
    parser.add_argument(
        "--branch",
        choices=("all", "logical"),
        default="all",
        help="with --run-out: `logical` leaves the structural branch and the calibration to be added",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --run-out: continue its checkpoint (a cut-short run, e.g. with --stop-on added)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    cfg = get_preset(args.preset)
    cfg.weights.random_clip = True  # no CLIP weights offline; the encoder keeps the preset's ImageNet weights
    cfg.train.seed = args.seed
    cfg.image_size = args.image_size or cfg.image_size
    cfg = override(cfg, args.set)
    if args.lite is not None:
        cfg.logical.encoder = cfg.structural.encoder = f"tf_efficientnet_lite{args.lite}"
        cfg.weights.weights = cfg.weights.structural_weights = f"efficientnet-lite{args.lite}"
    cfg.train.epochs = args.epochs or cfg.train.epochs
    rule = (cfg.train.patience, cfg.train.min_delta)
    cfg.train.early_stopping = False  # train to the cap; the rule is replayed on the recorded losses below
    if args.run_out and args.stop_on:
        cfg.train.early_stopping, cfg.train.stop_on = True, args.stop_on
    with tempfile.TemporaryDirectory() as tmp:
        dataset = dataset_for(args, Path(tmp))
        dataset = with_validation_split(dataset, cfg.train.validation_fraction, args.seed)
        cfg.logical.prompt = dataset.category.replace("_", " ")
        test = ImageTensorDataset(dataset.test, cfg.image_size)
        labels = np.array([s.label for s in dataset.test])
        sigma = gaussian_sigma_for(cfg.image_size, cfg.fusion.gaussian_sigma)
        curve: list[dict[str, Any]] = []
        evaluating, evaluating_cpu = 0.0, 0.0
        start, start_cpu = time.perf_counter(), time.process_time()

        def measure(record: dict[str, Any], net: NpgmfLogicalNet) -> None:
            nonlocal evaluating, evaluating_cpu
            reached, reached_cpu = time.perf_counter(), time.process_time()
            auroc = logical_auroc(net, test, labels, sigma)
            curve.append(
                {
                    "epoch": record["epoch"],
                    "train_loss": round(record["loss"]["total"], 5),
                    "validation_loss": record["validation_loss"],
                    "pseudo_auroc": None
                    if record["pseudo_auroc"] is None
                    else round(record["pseudo_auroc"], 4),
                    "auroc": round(auroc, 4),
                    "wall_s": round(reached - start - evaluating, 1),
                    "cpu_s": round(reached_cpu - start_cpu - evaluating_cpu, 1),
                }
            )
            evaluating += time.perf_counter() - reached
            evaluating_cpu += time.process_time() - reached_cpu
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)

        if args.run_out:
            summary = train_run(
                dataset, cfg, args.run_out, branch=args.branch, resume=args.resume, on_epoch=measure
            )
            if not curve:  # a resumed run whose recorded epochs already said stop
                print(json.dumps(summary["logical"]["curve"], indent=1))
                return
        else:
            train_logical(dataset, cfg, Path(tmp) / "logical", progress=False, on_epoch=measure)

    final = curve[-1]["auroc"]
    within = next(c for c in curve if c["auroc"] >= final - args.tolerance)
    # the first epoch from which every later one stays within the tolerance
    floor = final - args.tolerance
    stays = next(c for i, c in enumerate(curve) if all(d["auroc"] >= floor for d in curve[i:]))
    report = {
        "preset": args.preset,
        "data": "magnetic_tile" if args.magnetic_tile else f"make-data seed {args.make_data_seed}",
        "seed": args.seed,
        "images": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(labels)},
        "threads": args.threads,
        "cap": cfg.train.epochs,
        "cap_auroc": final,
        "best_auroc": max(c["auroc"] for c in curve),
        "first_within_tolerance": {"tolerance": args.tolerance, **within},
        "stays_within_tolerance_from": stays,
        "early_stopping": stopping(curve, *rule, cfg.train.epochs),
        "other_patiences": [stopping(curve, p, rule[1], cfg.train.epochs) for p in PATIENCES],
        "pseudo_auroc_stopping": [
            stopping(curve, p, rule[1], cfg.train.epochs, "pseudo_auroc") for p in PATIENCES
        ],
        "curve": curve,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
