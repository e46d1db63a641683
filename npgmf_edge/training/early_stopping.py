"""When to stop training the logical branch: the stopping rule, a pure function of the validation losses.

The validation loss is the training loss computed without gradients, in eval mode, on the validation
images after each epoch. An epoch improves when its loss is below the last improvement's by more than a
fraction `min_delta` of it (as Keras' EarlyStopping); training stops after `patience` epochs in a row
without, or at `max_epochs`, keeping the best epoch's weights. A non-finite loss stops training at once.
Pure, so a resumed run decides as an uninterrupted one. `TrainingCurve` is its record in a run
(logical/summary.json), read back by `read_training_curve`.

Example:
    >>> decide([1.0, 0.8, 0.79, 0.81], patience=2, min_delta=0.05, max_epochs=10)
    StopDecision(best_epoch=3, best_loss=0.79, stop=True, reason='patience')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npgmf_edge.errors import CheckpointError
from npgmf_edge.fileio import load_json
from npgmf_edge.rundir import LOGICAL_DIR, SUMMARY_FILE

# Why training ended, as recorded in summary.json.
STOP_PATIENCE = "patience"  # `patience` epochs without improvement
STOP_CAP = "max_epochs"  # the cap was reached (or early stopping was off)
STOP_NOT_FINITE = "non_finite_validation_loss"
STOP_NO_VALIDATION = "no_validation_images"  # early stopping asked for, but nothing to validate on: the cap


@dataclass(frozen=True)
class StopDecision:
    """The rule's answer after the last epoch of `losses`: the best (1-based) epoch so far and its loss
    (None while no loss has been finite), whether to stop, and why (None while training goes on)."""

    best_epoch: int | None
    best_loss: float | None
    stop: bool
    reason: str | None


def improves(loss: float, reference: float | None, min_delta: float) -> bool:
    """`loss` is a significant improvement: finite and below `reference` (the loss of the last
    significant improvement, None before the first finite one) by more than the fraction `min_delta`."""
    if not math.isfinite(loss):
        return False
    return reference is None or loss < reference - min_delta * abs(reference)


def decide(
    losses: Sequence[float], *, patience: int, min_delta: float, max_epochs: int, enabled: bool = True
) -> StopDecision:
    """Apply the stopping rule to the validation losses of epochs 1..len(losses).

    With `enabled=False` only the cap stops training; the best epoch is still reported.
    """
    best_epoch: int | None = None
    best_loss: float | None = None
    improved_epoch, reference = 0, None
    for epoch, loss in enumerate(losses, start=1):
        if math.isfinite(loss) and (best_loss is None or loss < best_loss):
            best_epoch, best_loss = epoch, float(loss)
        if improves(loss, reference, min_delta):
            improved_epoch, reference = epoch, float(loss)
    epochs = len(losses)
    reason = None
    if enabled and epochs and not math.isfinite(losses[-1]):
        reason = STOP_NOT_FINITE
    elif enabled and epochs - improved_epoch >= patience:
        reason = STOP_PATIENCE
    elif epochs >= max_epochs:
        reason = STOP_CAP
    return StopDecision(best_epoch, best_loss, reason is not None, reason)


@dataclass
class TrainingCurve:
    """The logical branch's training, epoch by epoch, as summary.json records it under "curve".
    `validation_loss[i]` / `pseudo_auroc[i]` (`training.pseudo_validation`) are None where epoch i+1 was
    not validated or gave no finite value; `stop_on`: which the rule watched; `best_epoch`: 1-based;
    `restored_best`: the saved weights are the best epoch's, not the last one's."""

    train_loss: list[float]
    validation_loss: list[float | None]
    seconds: list[float]
    best_epoch: int | None
    stopped_after_epoch: int
    stop_reason: str
    restored_best: bool
    early_stopping: bool
    patience: int
    min_delta: float
    max_epochs: int
    # Added with early stopping on pseudo-anomalies; a summary.json from before has neither (read as
    # not measured, and the validation loss watched).
    pseudo_auroc: list[float | None] = field(default_factory=list)
    stop_on: str = "validation_loss"

    @classmethod
    def from_dict(cls, data: dict) -> TrainingCurve:
        return cls(**data)


def read_training_curve(run_dir: Path) -> TrainingCurve | None:
    """The logical branch's training curve (logical/summary.json, "curve"); None for a run without a
    logical branch or trained before curves were recorded. CheckpointError naming the file if damaged."""
    path = Path(run_dir) / LOGICAL_DIR / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = load_json(path)
    recorded = summary.get("curve") if isinstance(summary, dict) else None
    if recorded is None:
        return None
    try:
        return TrainingCurve.from_dict(recorded)
    except TypeError as exc:
        raise CheckpointError(f"{path} holds a damaged training curve: {exc}") from exc
