"""Early stopping of the logical branch: the stopping rule on hand-computed loss sequences, and training
that stops on it, keeps the best epoch's weights, respects the cap, resumes exactly and records its curve.

The training tests script the validation losses (monkeypatched `validation_loss`), so where training
stops is known in advance; `validation_loss` itself is checked against a one-batch computation.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from npgmf_edge.config import NpgmfConfig, get_preset
from npgmf_edge.data import load_dataset
from npgmf_edge.errors import ConfigError
from npgmf_edge.fileio import load_tensors
from npgmf_edge.models.logical.loss import logical_loss
from npgmf_edge.report import plot_training_curve, write_html_report
from npgmf_edge.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    load_logical,
)
from npgmf_edge.training import logical as logical_training
from npgmf_edge.training.early_stopping import (
    STOP_CAP,
    STOP_NO_VALIDATION,
    STOP_NOT_FINITE,
    STOP_PATIENCE,
    StopDecision,
    decide,
    read_training_curve,
)
from npgmf_edge.training.images import ImageTensorDataset
from npgmf_edge.training.logical import train_logical

# --- the rule alone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("losses", "patience", "min_delta", "cap", "expected"),
    [
        # still improving: no stop before the cap
        ([5.0, 4.0, 3.0], 2, 0.0, 10, StopDecision(3, 3.0, False, None)),
        # the cap: 3 epochs of 3
        ([5.0, 4.0, 3.0], 2, 0.0, 3, StopDecision(3, 3.0, True, STOP_CAP)),
        # best at epoch 2, then 3 epochs without a lower loss: patience 3 stops after epoch 5
        ([1.0, 0.9, 0.95, 0.92, 0.91], 3, 0.0, 10, StopDecision(2, 0.9, True, STOP_PATIENCE)),
        ([1.0, 0.9, 0.95, 0.92], 3, 0.0, 10, StopDecision(2, 0.9, False, None)),
        # min_delta 1%: 0.995, 0.992, 0.991 are all above 1.0 - 0.01, so the last significant improvement
        # is epoch 1 and patience 3 stops after epoch 4; the weights kept are the lowest loss's (epoch 4)
        ([1.0, 0.995, 0.992, 0.991], 3, 0.01, 10, StopDecision(4, 0.991, True, STOP_PATIENCE)),
        ([1.0, 0.995, 0.992, 0.991], 3, 0.0, 10, StopDecision(4, 0.991, False, None)),
        # small steps add up against the last significant improvement (1.0): 0.988 < 0.99 counts at epoch 3
        ([1.0, 0.994, 0.988, 0.987], 2, 0.01, 10, StopDecision(4, 0.987, False, None)),
        # a non-finite loss stops at once and never becomes the best
        ([1.0, 0.8, math.nan], 5, 0.0, 10, StopDecision(2, 0.8, True, STOP_NOT_FINITE)),
        ([1.0, math.inf], 5, 0.0, 10, StopDecision(1, 1.0, True, STOP_NOT_FINITE)),
        ([math.nan], 5, 0.0, 10, StopDecision(None, None, True, STOP_NOT_FINITE)),
        ([], 5, 0.0, 10, StopDecision(None, None, False, None)),
    ],
)
def test_stopping_rule_on_hand_computed_sequences(losses, patience, min_delta, cap, expected) -> None:
    assert decide(losses, patience=patience, min_delta=min_delta, max_epochs=cap) == expected


def test_disabled_rule_stops_only_at_the_cap_and_still_names_the_best_epoch() -> None:
    plateau = [1.0, 0.9, 0.95, 0.92, 0.91]
    assert decide(plateau, patience=1, min_delta=0.0, max_epochs=10, enabled=False) == StopDecision(
        2, 0.9, False, None
    )
    assert decide(plateau, patience=1, min_delta=0.0, max_epochs=5, enabled=False).reason == STOP_CAP


@pytest.mark.parametrize(("name", "value"), [("patience", 0), ("min_delta", -0.1), ("min_delta", 1.0)])
def test_out_of_range_stopping_options_are_refused(name: str, value: float) -> None:
    cfg = get_preset("tiny")
    setattr(cfg.train, name, value)
    with pytest.raises(ConfigError, match=name):
        cfg.validate()


# --- training with it ------------------------------------------------------------------------------


def small_cfg(epochs: int, patience: int = 2) -> NpgmfConfig:
    """tiny at 64 px, random weights, no text prior: seconds per epoch on the shared 64 px set."""
    cfg = get_preset("tiny")
    cfg.image_size = 64
    cfg.weights.pretrained = False
    cfg.logical.use_text_prior = False
    cfg.train.epochs = epochs
    cfg.train.batch_size = 4
    cfg.train.patience = patience
    cfg.train.min_delta = 0.0
    return cfg


def scripted(losses: list[float | None]):
    """A stand-in for `validation_loss` returning `losses` in turn, one per epoch."""
    calls = iter(losses)
    return lambda net, images, cfg: next(calls)


def snapshots(into: dict[int, dict[str, torch.Tensor]]):
    """An on_epoch callback keeping a copy of the weights after every epoch."""

    def keep(record: dict, net) -> None:
        into[record["epoch"]] = {k: v.clone() for k, v in net.state_dict().items()}

    return keep


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Best at epoch 2; epochs 3 and 4 do not improve: patience 2 stops after epoch 4 of a cap of 6.
PLATEAU = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]


@pytest.fixture(scope="module")
def stopped_run(loco_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    dataset = load_dataset(loco_dataset_dir)
    out = tmp_path_factory.mktemp("stopped") / "logical"
    weights: dict[int, dict[str, torch.Tensor]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted(PLATEAU))
        summary = train_logical(
            dataset, small_cfg(epochs=6), out, progress=False, on_epoch=snapshots(weights)
        )
    return dataset, out, summary, weights


def test_training_stops_when_the_validation_loss_stops_improving(stopped_run) -> None:
    _, _, summary, weights = stopped_run
    curve = summary["curve"]
    assert sorted(weights) == [1, 2, 3, 4]  # epochs 5 and 6 never ran
    assert summary["epochs"] == curve["stopped_after_epoch"] == 4
    assert curve["stop_reason"] == STOP_PATIENCE and curve["best_epoch"] == 2 and curve["restored_best"]
    assert curve["validation_loss"] == PLATEAU[:4]
    assert curve["train_loss"] == summary["loss_curve"] and len(curve["seconds"]) == 4
    assert (curve["patience"], curve["min_delta"], curve["max_epochs"]) == (2, 0.0, 6)


def test_the_best_epochs_weights_are_saved(stopped_run) -> None:
    _, out, _, weights = stopped_run
    saved = load_logical(out).state_dict()
    assert same_weights(saved, weights[2])
    assert not same_weights(saved, weights[4])  # the last epoch's differ: the check can fail


def test_the_curve_is_in_summary_json_and_readable_from_the_run(stopped_run) -> None:
    _, out, summary, _ = stopped_run
    assert json.loads((out / SUMMARY_FILE).read_text())["curve"] == summary["curve"]
    pseudo = summary["curve"]["pseudo_auroc"]  # measured every epoch, whatever the rule watches
    assert len(pseudo) == 4 and all(0.0 <= v <= 1.0 for v in pseudo)
    assert summary["curve"]["stop_on"] == "validation_loss"
    curve = read_training_curve(out.parent)
    assert curve is not None and curve.best_epoch == 2 and curve.validation_loss == PLATEAU[:4]
    assert read_training_curve(out.parent.parent) is None  # no logical/ there


def test_the_cap_holds_while_the_loss_keeps_falling(loco_dataset_dir: Path, tmp_path: Path) -> None:
    weights: dict[int, dict[str, torch.Tensor]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted([3.0, 2.0, 1.0, 0.5]))
        summary = train_logical(
            load_dataset(loco_dataset_dir),
            small_cfg(epochs=3),
            tmp_path,
            progress=False,
            on_epoch=snapshots(weights),
        )
    curve = summary["curve"]
    assert summary["epochs"] == 3 and curve["stop_reason"] == STOP_CAP
    assert curve["best_epoch"] == 3 and not curve["restored_best"]
    assert same_weights(load_logical(tmp_path).state_dict(), weights[3])


class Interrupted(Exception):
    pass


def test_a_run_killed_after_a_worse_epoch_resumes_to_the_same_best_weights(
    stopped_run, loco_dataset_dir: Path, tmp_path: Path
) -> None:
    _, straight, _, _ = stopped_run

    def kill_in_epoch_four(epoch: int, step: int) -> None:
        if epoch == 3:
            raise Interrupted

    dataset = load_dataset(loco_dataset_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted(PLATEAU))
        with pytest.raises(Interrupted):
            train_logical(dataset, small_cfg(epochs=6), tmp_path, progress=False, on_step=kill_in_epoch_four)
        tensors, meta = load_tensors(tmp_path / CHECKPOINT_FILE)
        assert meta["epoch"] == 3 and any(k.startswith("best.") for k in tensors)  # epoch 2's weights
        patch.setattr(logical_training, "validation_loss", scripted(PLATEAU[3:]))
        resumed = train_logical(dataset, small_cfg(epochs=6), tmp_path, resume=True, progress=False)
    assert resumed["curve"]["best_epoch"] == 2 and resumed["epochs"] == 4
    assert same_weights(load_logical(tmp_path).state_dict(), load_logical(straight).state_dict())


def test_without_early_stopping_every_epoch_runs_and_the_last_weights_stay(
    loco_dataset_dir: Path, tmp_path: Path
) -> None:
    cfg = small_cfg(epochs=3, patience=1)
    cfg.train.early_stopping = False
    weights: dict[int, dict[str, torch.Tensor]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted([1.0, 2.0, 3.0]))
        summary = train_logical(
            load_dataset(loco_dataset_dir), cfg, tmp_path, progress=False, on_epoch=snapshots(weights)
        )
    assert summary["curve"]["best_epoch"] == 1 and summary["curve"]["stop_reason"] == STOP_CAP
    assert same_weights(load_logical(tmp_path).state_dict(), weights[3])


def test_no_validation_images_trains_to_the_cap_and_says_so(loco_dataset_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    dataset = dataclasses.replace(load_dataset(loco_dataset_dir), validation=[])
    summary = train_logical(dataset, small_cfg(epochs=1), tmp_path, progress=False)
    assert summary["curve"]["stop_reason"] == STOP_NO_VALIDATION
    assert summary["curve"]["validation_loss"] == [None]


def test_a_diverged_first_epoch_is_a_clear_error(loco_dataset_dir: Path, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted([None]))
        with pytest.raises(ConfigError, match=r"diverged.*lower the learning rate"):
            train_logical(load_dataset(loco_dataset_dir), small_cfg(epochs=3), tmp_path, progress=False)
    assert not (tmp_path / MODEL_FILE).exists()


def test_validation_loss_is_the_training_loss_on_the_validation_images_without_changing_the_net(
    loco_dataset_dir: Path,
) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = small_cfg(epochs=1)
    cfg.train.batch_size = 3  # 4 validation images: batches of 3 and 1, weighted by their size
    torch.manual_seed(0)
    net = logical_training._build_fresh(cfg)
    images = ImageTensorDataset(dataset.validation, cfg.image_size)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = logical_training.validation_loss(net, images, cfg)
    net.eval()
    with torch.no_grad():
        everything = torch.stack([images[i] for i in range(len(images))])
        expected = float(logical_loss(net.forward_train(everything), cfg.logical).total)
    assert got == pytest.approx(expected, rel=1e-5)
    assert same_weights(net.state_dict(), before)  # no BatchNorm statistics, no codebook usage counted


def test_training_can_stop_on_the_pseudo_anomaly_auroc(loco_dataset_dir: Path, tmp_path: Path) -> None:
    # The loss keeps falling; the pseudo-anomaly AUROC is best at epoch 2, then 2 epochs do not beat it:
    # patience 2 stops after epoch 4 and keeps epoch 2's weights. Watching the loss would run all 6.
    aurocs = [0.70, 0.90, 0.85, 0.88, 0.95, 0.96]
    cfg = small_cfg(epochs=6)
    cfg.train.stop_on = "pseudo_auroc"
    weights: dict[int, dict[str, torch.Tensor]] = {}
    calls = iter(aurocs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logical_training, "validation_loss", scripted([3.0, 2.0, 1.5, 1.2, 1.0, 0.9]))
        patch.setattr(logical_training.PseudoValidation, "auroc", lambda self, net: next(calls))
        summary = train_logical(
            load_dataset(loco_dataset_dir), cfg, tmp_path / "logical", progress=False,
            on_epoch=snapshots(weights),
        )  # fmt: skip
    curve = summary["curve"]
    assert (curve["stopped_after_epoch"], curve["best_epoch"], curve["stop_reason"]) == (4, 2, STOP_PATIENCE)
    assert curve["pseudo_auroc"] == aurocs[:4] and curve["stop_on"] == "pseudo_auroc"
    assert same_weights(load_logical(tmp_path / "logical").state_dict(), weights[2])


def test_an_unknown_stop_signal_is_refused() -> None:
    cfg = small_cfg(epochs=2)
    cfg.train.stop_on = "accuracy"
    with pytest.raises(ConfigError, match="stop_on"):
        cfg.validate()


# --- where it is shown -----------------------------------------------------------------------------


def test_cli_records_the_options_and_logs_each_epoch(cli, loco_dataset_dir: Path, tmp_path: Path) -> None:
    code, _, err = cli(
        "train", loco_dataset_dir, "--out", tmp_path / "run", "--preset", "tiny", "--image-size", 64,
        "--no-pretrained", "--no-text-prior", "--branch", "logical", "--max-epochs", 2, "--patience", 7,
        "--min-delta", 0.02, "--no-early-stopping", "--stop-on", "pseudo-auroc",
    )  # fmt: skip
    assert code == 0, err
    train = json.loads((tmp_path / "run" / "logical" / CONFIG_FILE).read_text())["train"]
    recorded = (train["epochs"], train["patience"], train["min_delta"], train["early_stopping"])
    assert recorded == (2, 7, 0.02, False) and train["stop_on"] == "pseudo_auroc"
    assert "logical epoch 1/2:" in err and "| validation " in err and "pseudo-anomaly AUROC 0." in err
    assert "logical branch stopped after epoch 2: reached the cap of 2 epochs" in err


def test_report_plots_the_curve_in_its_own_section(stopped_run, tmp_path: Path) -> None:
    import cv2

    _, out, _, _ = stopped_run
    png = plot_training_curve(read_training_curve(out.parent), tmp_path / "training_curve.png")
    assert cv2.imread(str(png)) is not None
    page = write_html_report(tmp_path / "report.html", "t", "table", [], [], {}, training_curve=png)
    html = page.read_text()
    assert "Training curve" in html and "<img src='training_curve.png'>" in html
    assert "Training curve" not in write_html_report(tmp_path / "plain.html", "t", "", [], [], {}).read_text()
    assert np.isfinite(read_training_curve(out.parent).train_loss).all()
