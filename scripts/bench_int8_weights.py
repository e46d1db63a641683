"""What 7-bit INT8 weights cost against 8-bit ones: image AUROC, verdicts and graph latency.

8-bit weights saturate the int16 pair sums of x86 CPUs without VNNI (docs/DEPLOY.md); the export now
quantises weights to 7 bits (`reduce_range`). This script exports the same run twice, INT8 with 8-bit
weights (as before, the saturation check switched off) and with 7-bit weights (as now), both with the
same float layers, and compares each with FP32 on the test images (this machine, onnxruntime CPU), and
times each graph at batch 1 and 8 in one run, interleaved.

Usage:
    python scripts/bench_int8_weights.py --run demo_out/run --data demo_out/data
    python scripts/bench_int8_weights.py --magnetic-tile --epochs 2 --work /tmp/mt   # trains tiny first
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

from npgmf_edge.export import precision
from npgmf_edge.export.bundle import ExportOptions, export_bundle
from npgmf_edge.runtime import Inspector
from npgmf_edge.runtime.manifest import graph_file, read_manifest

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared/data/magnetic_tile"
MT_DEFECTS = {"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"}
LENIENT = {"int8_max_disagreement": 1.0, "int8_min_rank_correlation": -1.0, "int8_max_score_drift": 1e9}


def export(run: Path, out: Path, reduce_range: bool) -> Path:
    original_quantize, original_check = precision.quantize_static, precision.check_no_saturation

    def quantize(*args, **kwargs):
        return original_quantize(*args, **{**kwargs, "reduce_range": reduce_range})

    precision.quantize_static = quantize
    if not reduce_range:
        precision.check_no_saturation = lambda model, path: None
    try:
        options = ExportOptions(precisions=("fp32", "int8"), knn="graph", tensorrt=False, **LENIENT)
        export_bundle(run, out, options, log=print)
    finally:
        precision.quantize_static, precision.check_no_saturation = original_quantize, original_check
    return out


def scores(bundle: Path, precision_name: str, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    with Inspector.open(bundle, precision=precision_name, self_test=False) as inspector:
        results = inspector.inspect(paths)
    return np.array([r.score for r in results]), np.array([r.is_anomalous for r in results])


def latency_ms(graphs: dict[str, Path], size: int, iters: int = 20) -> dict[str, dict[int, float]]:
    """Median ms per image of each graph at batch 1 and 8, the graphs' calls interleaved."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {
        k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
        for k, p in graphs.items()
    }
    out: dict[str, dict[int, float]] = {k: {} for k in graphs}
    for batch in (1, 8):
        pixels = np.random.default_rng(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
        times: dict[str, list[float]] = {k: [] for k in graphs}
        for i in range(iters + 3):
            for name, session in sessions.items():
                tick = time.perf_counter()
                session.run(None, {"pixels": pixels})
                if i >= 3:
                    times[name].append(time.perf_counter() - tick)
        for name in graphs:
            out[name][batch] = round(1000 * float(np.median(times[name])) / batch, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a trained, calibrated run (with --data)")
    parser.add_argument("--data", type=Path, help="the run's dataset")
    parser.add_argument("--magnetic-tile", action="store_true", help="train the tiny preset on magnetic tile")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("int8_weights"))
    args = parser.parse_args()
    from npgmf_edge.data import load_dataset

    if args.magnetic_tile:
        from npgmf_edge.config import get_preset
        from npgmf_edge.training.run import train_run

        dataset = load_dataset(
            MAGNETIC_TILE, format="folder", normal_dir="MT_Free/Imgs", abnormal_dirs=MT_DEFECTS, seed=0
        )
        cfg = get_preset("tiny")
        cfg.weights.random_clip = True
        cfg.train.epochs = args.epochs
        run = args.work / "run"
        if not (run / "calibration.json").is_file():
            train_run(dataset, cfg, run, branch="all")
    else:
        dataset, run = load_dataset(args.data), args.run
    samples = dataset.test
    labels = np.array([s.label for s in samples])
    paths = [s.image_path for s in samples]
    bundles = {
        "8-bit": export(run, args.work / "bundle_8bit", reduce_range=False),
        "7-bit": export(run, args.work / "bundle_7bit", reduce_range=True),
    }
    fp32_scores, fp32_verdicts = scores(bundles["7-bit"], "fp32", paths)
    report = {"images": len(paths), "fp32_image_auroc": float(roc_auc_score(labels, fp32_scores)), "int8": {}}
    for name, bundle in bundles.items():
        got, verdicts = scores(bundle, "int8", paths)
        quality = read_manifest(bundle).raw["quality"]["int8"]
        report["int8"][name] = {
            "image_auroc": float(roc_auc_score(labels, got)),
            "verdict_agreement_with_fp32": float(np.mean(verdicts == fp32_verdicts)),
            "validation_rank_correlation": quality["score_rank_correlation"],
            "validation_score_drift": quality["score_drift"],
        }
    size = read_manifest(bundles["7-bit"]).image_size
    graphs = {"fp32": bundles["7-bit"] / graph_file("fp32")}
    graphs.update({f"int8 {k}": b / graph_file("int8") for k, b in bundles.items()})
    report["ms_per_image"] = latency_ms(graphs, size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
