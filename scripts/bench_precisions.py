"""What each bundle precision costs, against the torch run, on a dataset's test images.

Trains a full run (both branches, calibrated), exports one bundle holding fp32, fp16 and int8 graphs
(`--knn faiss` or `graph`), and prints `verify`'s table: max / mean map differences, image-score relative
difference, verdict agreement and image AUROC per precision beside the torch run's. Two datasets:
`make-data` (the default synthetic LOCO-style set) and `magnetic-tile` (real images in ../shared/data;
a seeded half of MT_Free trains, the rest plus MT_Blowhole and MT_Crack test).

Usage:
    python scripts/bench_precisions.py --dataset make-data --out prec_synthetic.json
    python scripts/bench_precisions.py --dataset magnetic-tile --epochs 10 --out prec_mt.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.export.bundle import ExportOptions, export_bundle
from npgmf_edge.export.verify import format_verify_table, verify_bundle
from npgmf_edge.training.run import train_run

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile"
MT_DEFECTS = {"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"}


def dataset_for(name: str, work: Path, seed: int):
    if name == "make-data":
        generate_dataset(work / "data", SyntheticConfig(seed=seed))
        return load_dataset(work / "data")
    return load_dataset(
        MAGNETIC_TILE, format="folder", normal_dir="MT_Free/Imgs", abnormal_dirs=MT_DEFECTS, seed=seed
    )


def run(args: argparse.Namespace, work: Path) -> dict:
    dataset = dataset_for(args.dataset, work, args.seed)
    cfg = get_preset(args.preset)
    cfg.weights.pretrained = False
    cfg.train.seed = args.seed
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.image_size is not None:
        cfg.image_size = args.image_size
    train_run(dataset, cfg, work / "run", branch="all")
    options = ExportOptions(precisions=("fp32", "fp16", "int8"), knn=args.knn, tensorrt=False)
    export = export_bundle(work / "run", work / "bundle", options, log=print)
    report = verify_bundle(work / "bundle", work / "run", dataset)
    print(format_verify_table(report))
    return {"dataset": args.dataset, "preset": args.preset, "epochs": cfg.train.epochs, "knn": args.knn,
            "image_size": cfg.image_size, "export_seconds": export.seconds,
            "export_quality": export.quality, "verify": report.to_json()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["make-data", "magnetic-tile"], default="make-data")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--knn", choices=["faiss", "graph"], default="faiss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
