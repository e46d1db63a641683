"""Fusion chosen per run vs the paper's fixed 1:3: test image AUROC of each branch, of the paper's fusion
(pixel level, 1:3) and of `auto` (chosen on validation pseudo-anomalies), on a trained run.

Computes the branch maps of the run's validation images, of their pseudo-anomalies and of the test images
once, then calibrates both ways in memory (the run on disk is not changed). Also prints each candidate's
test AUROC (what an oracle would pick) beside its pseudo-anomaly AUROC. `--random-logical` re-initialises
the logical branch's trained layers first (the deliberately broken case: the fusion must fall back to the
structural branch). `--save-maps FILE.npz` keeps every branch map and the labels, and `--maps FILE.npz`
replays a saved run without it (to compare choice rules at no model cost).

Usage:
    python scripts/bench_fusion.py runs/tray --data data/ [--random-logical] [--out fusion.json]
    python scripts/bench_fusion.py runs/tray --data data/ --save-maps tray.npz; ... --maps tray.npz
    python scripts/bench_fusion.py runs/mt --data ../shared/data/magnetic_tile --normal-dir MT_Free/Imgs \
        --abnormal blowhole=MT_Blowhole/Imgs --abnormal crack=MT_Crack/Imgs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration.fusion_choice import choose_fusion
from npgmf_edge.calibration.pseudo_anomalies import make_pseudo_anomalies
from npgmf_edge.config import FusionConfig
from npgmf_edge.data import load_dataset, read_image
from npgmf_edge.detector import branch_map_fn
from npgmf_edge.postprocess import branch_image_scores, gaussian_sigma_for
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.rundir import load_run, read_provenance

BATCH = 8


def randomize_logical(net: torch.nn.Module, encoder: torch.nn.Module, seed: int = 0) -> None:
    """Re-initialise every layer of the logical branch outside the frozen encoder (random weights)."""
    torch.manual_seed(seed)
    frozen = set(encoder.modules())
    for module in net.modules():
        if module not in frozen and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def maps_of(fn, images: list[np.ndarray], size: int) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), BATCH):
        pixels = np.stack([to_model_input(image, size) for image in images[start : start + BATCH]])
        for name, maps in fn(torch.from_numpy(pixels)).items():
            out.setdefault(name, []).append(maps)
    return {name: np.concatenate(maps) for name, maps in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--normal-dir", default=None)
    parser.add_argument("--abnormal", action="append", default=[], help="NAME=DIR (folder datasets)")
    parser.add_argument("--random-logical", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--save-maps", type=Path, default=None)
    parser.add_argument("--maps", type=Path, default=None, help="replay saved maps (RUN and data unused)")
    parser.add_argument(
        "--pseudo-per-image", type=int, default=None, help="instead of the run's fusion.pseudo_per_image"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    maps = np.load(args.maps) if args.maps else compute_maps(args)
    if args.save_maps:
        np.savez_compressed(args.save_maps, **maps)
    result = {"run": str(args.run), "random_logical": args.random_logical, **score(maps)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def compute_maps(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Every map the comparison needs: "normal_*", "pseudo_*", "test_*" per branch, the test labels, which
    test images are logical / structural anomalies, and the smoothing sigma."""
    run = load_run(args.run)
    if args.random_logical:
        randomize_logical(run.net.logical, run.net.logical.encoder)
    fn = branch_map_fn(run, torch.device("cpu"))
    size, cfg = run.cfg.image_size, run.cfg
    sigma = gaussian_sigma_for(size, cfg.fusion.gaussian_sigma)
    validation = [
        to_model_input(read_image(Path(p)), size).transpose(1, 2, 0).astype(np.uint8)
        for p in read_provenance(args.run)["validation_images"]
    ]
    per_image = args.pseudo_per_image or cfg.fusion.pseudo_per_image
    pseudo = make_pseudo_anomalies(validation, seed=cfg.train.seed, per_image=per_image)
    normal_maps, pseudo_maps = maps_of(fn, validation, size), maps_of(fn, [p.image for p in pseudo], size)
    kwargs = {}
    if args.normal_dir:
        kwargs = {
            "normal_dir": args.normal_dir,
            "abnormal_dirs": dict(a.split("=", 1) for a in args.abnormal),
        }
    dataset = load_dataset(args.data, **kwargs)
    test = dataset.test
    test_maps = maps_of(fn, [read_image(s.image_path) for s in test], size)
    return {
        **{f"{part}_{name}": maps[name] for part, maps in
           (("normal", normal_maps), ("pseudo", pseudo_maps), ("test", test_maps)) for name in maps},
        "labels": np.array([s.label for s in test]),
        "pseudo_kinds": np.array([p.kind for p in pseudo]),
        **{kind: np.array([s.label == 0 or s.defect_type == kind for s in test])
           for kind in ("logical_anomalies", "structural_anomalies")},
        "sigma": np.array(sigma),
    }  # fmt: skip


def score(maps: dict[str, np.ndarray]) -> dict:
    """Test AUROC of each branch, of the paper's and of auto's fusion, and of every candidate."""
    labels, sigma = maps["labels"], float(maps["sigma"])
    branches = ("structural", "logical")
    normal_maps = {name: maps[f"normal_{name}"] for name in branches}
    pseudo_maps = {name: maps[f"pseudo_{name}"] for name in branches}
    test_maps = {name: maps[f"test_{name}"] for name in branches}
    subsets = {"all": np.ones(len(labels), bool)}
    for kind in ("logical_anomalies", "structural_anomalies"):
        if (labels[maps[kind]] == 1).any():
            subsets[kind] = maps[kind]

    def aurocs(scores: np.ndarray) -> dict[str, float]:
        return {name: round(float(roc_auc_score(labels[m], scores[m])), 4) for name, m in subsets.items()}

    result: dict = {
        "n_validation": len(normal_maps["structural"]),
        "n_pseudo": len(pseudo_maps["structural"]),
        "n_test": len(labels),
        "structural": aurocs(branch_image_scores(test_maps["structural"], sigma)),
        "logical": aurocs(branch_image_scores(test_maps["logical"], sigma)),
    }
    for mode in ("paper", "auto"):
        calibration = choose_fusion(normal_maps, pseudo_maps, FusionConfig(mode=mode), sigma)
        scores = calibration.post(test_maps["structural"], test_maps["logical"])[1]
        result[f"fused_{mode}"] = aurocs(scores)
        result[f"choice_{mode}"] = {
            "level": calibration.fusion_level,
            "weights": [calibration.weight_structural, calibration.weight_logical],
            "pseudo_auroc": round(calibration.pseudo_auroc, 4),
        }
    selection = calibration.fusion_selection
    result["pseudo"] = {"structural": selection.structural_auroc, "logical": selection.logical_auroc}
    result["candidates"] = []
    for c in selection.candidates:
        trial = dataclasses.replace(calibration, fusion_level=c.level, weight_logical=c.weight_logical)
        test_auroc = aurocs(trial.post(test_maps["structural"], test_maps["logical"])[1])["all"]
        result["candidates"].append(
            {
                "level": c.level,
                "w_logical": c.weight_logical,
                "pseudo_auroc": round(c.auroc, 4),
                "lift_low": round(c.lift_low, 4),
                "test_auroc": test_auroc,
            }
        )
    return result


if __name__ == "__main__":
    main()
