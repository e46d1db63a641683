"""Train the NPGMF logical branch on good images, with per-epoch checkpoints and exact resume.

Writes into `out_dir` (normally `<run>/logical/`, laid out in `rundir`): config.json, checkpoint.safetensors
(model + Adam state after the last finished epoch, the best epoch's weights, the loss history; atomically
every epoch), model.safetensors (final weights, the best epoch's under early stopping) and summary.json
(loss terms, seconds per epoch, codebook usage, the training curve and why training stopped).

After each epoch the loss is measured on the validation images; with `train.early_stopping` training stops
when it stops improving (`training.early_stopping`), `train.epochs` being the cap. Nothing is pickled; a run
trained on CUDA loads anywhere. Seeded and deterministic on CPU: epoch e's batch order and codebook
(re)initialisations come from a generator seeded with (seed, e), so a run killed mid-epoch and resumed
ends with the same weights as an uninterrupted one.

Example:
    >>> summary = train_logical(load_dataset(Path("data")), get_preset("tiny"), Path("runs/x/logical"))
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import AnomalyDataset
from npgmf_edge.device import resolve_device
from npgmf_edge.errors import CheckpointError, ConfigError, DatasetError
from npgmf_edge.fileio import load_tensors, save_json, save_tensors
from npgmf_edge.models.logical.loss import logical_loss
from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet
from npgmf_edge.models.text_prior import compute_text_embedding
from npgmf_edge.progress import Reporter
from npgmf_edge.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    build_logical_from_state,
)
from npgmf_edge.training.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from npgmf_edge.training.early_stopping import (
    STOP_CAP,
    STOP_NO_VALIDATION,
    STOP_NOT_FINITE,
    STOP_PATIENCE,
    StopDecision,
    TrainingCurve,
    decide,
)
from npgmf_edge.training.images import ImageTensorDataset
from npgmf_edge.training.pseudo_validation import PseudoValidation

log = logging.getLogger(__name__)

MODEL_PREFIX = "model."
BEST_PREFIX = "best."  # the best epoch's weights in the checkpoint, when they are not the last epoch's
# What a resumed run must share with the interrupted one: everything that shapes the network or its
# training, except the number of epochs (so a finished run can also be extended) and the stopping rule's
# patience and threshold (it only reads the recorded history). What it watches (`stop_on`) must match:
# the checkpoint holds the best epoch's weights by that signal only.
RESUME_MUST_MATCH = ("image_size", "logical.", "train.")
RESUME_MAY_CHANGE = {"train.epochs", "train.early_stopping", "train.patience", "train.min_delta"}

LR_SCHEDULES = ("constant", "cosine")

StepCallback = Callable[[int, int], None]  # (epoch, step) after each optimiser step
# (the epoch's history record, the network in eval mode) after each epoch and its validation
EpochCallback = Callable[[dict[str, Any], NpgmfLogicalNet], None]


def epoch_lr(cfg: NpgmfConfig, epoch: int) -> float:
    """Learning rate of `epoch` (0-based): a pure function of the config, so resuming needs no state."""
    tc = cfg.train
    if tc.lr_schedule == "constant":
        return tc.lr
    if tc.lr_schedule == "cosine":
        return tc.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / tc.epochs))
    raise ConfigError(
        f"unknown train.lr_schedule {tc.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
    )


def _adam(net: NpgmfLogicalNet, cfg: NpgmfConfig) -> torch.optim.Adam:
    # fused: one kernel for all parameters (several times faster than the per-tensor loop on CPU)
    return torch.optim.Adam(
        net.trainable_parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas), fused=True
    )


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """An RNG for one purpose (`stream`) in one epoch, independent of how the run got there."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 7 + stream) % (2**63))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _check_resumable(saved: dict[str, Any], cfg: NpgmfConfig, ckpt: Path) -> None:
    old, new = _flatten(saved), _flatten(cfg.to_dict())
    relevant = {k for k in old.keys() | new.keys() if k.startswith(RESUME_MUST_MATCH)} - RESUME_MAY_CHANGE
    changed = sorted(k for k in relevant if old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"cannot resume {ckpt}: the configuration changed ({details}); "
            "resume with the original options, or train into a new --out folder"
        )


def _build_fresh(cfg: NpgmfConfig) -> NpgmfLogicalNet:
    lg = cfg.logical
    embedding = None
    if lg.use_text_prior:
        embedding = compute_text_embedding(
            lg.prompt or "object",
            lg.clip_model,
            lg.clip_pretrained,
            pretrained=cfg.weights.clip_pretrained,
            weights=cfg.weights.clip_weights,
            seed=cfg.train.seed,
        )
    torch.manual_seed(cfg.train.seed)
    weights = cfg.weights.encoder_weights()
    return NpgmfLogicalNet(lg, cfg.image_size, embedding, cfg.weights.pretrained, weights)


def train_logical(
    dataset: AnomalyDataset,
    cfg: NpgmfConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train on `dataset.train` into `out_dir` on `device`, validating on `dataset.validation` after each
    epoch; returns a JSON-able summary (also in summary.json). `resume=True` continues from the checkpoint
    when there is one (the config may differ only in the epochs and the stopping rule)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not dataset.train:
        raise DatasetError(f"{dataset.root}: no training images for category {dataset.category!r}")
    tc = cfg.train
    device = resolve_device(device)
    epoch_lr(cfg, 0)  # reject an unknown schedule before any work
    ckpt_path = out_dir / CHECKPOINT_FILE

    start_epoch, history, best_state = 0, [], None
    if resume and ckpt_path.is_file():
        tensors, meta = load_tensors(ckpt_path)
        _check_resumable(meta.get("config", {}), cfg, ckpt_path)
        model_state = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
        net = build_logical_from_state(cfg, model_state, ckpt_path).to(device)
        optimizer = _adam(net, cfg)  # after .to(device): the restored Adam state follows the parameters
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        start_epoch, history = int(meta["epoch"]), list(meta["history"])
        decision = _decision(history, cfg)
        best_state = _resumed_best_state(tensors, model_state, decision, start_epoch, ckpt_path)
        log.info("resuming %s after epoch %d", out_dir, start_epoch)
    else:
        if resume:
            log.warning("no checkpoint in %s to resume from; training from scratch", out_dir)
        net = _build_fresh(cfg).to(device)
        optimizer = _adam(net, cfg)
    save_json(cfg.to_dict(), out_dir / CONFIG_FILE)

    images = ImageTensorDataset(dataset.train, cfg.image_size)
    validation = ImageTensorDataset(dataset.validation, cfg.image_size) if dataset.validation else None
    monitor = PseudoValidation.from_samples(dataset.validation, cfg) if dataset.validation else None
    if validation is None and tc.early_stopping:
        log.warning(
            "%s has no validation images for %r: no early stopping, the logical branch trains all %d epochs",
            dataset.root,
            dataset.category,
            tc.epochs,
        )
    n = len(images)
    batches_per_epoch = (n + tc.batch_size - 1) // tc.batch_size
    decision = _decision(history, cfg, validation is not None)
    remaining = 0 if decision.stop else max(tc.epochs - start_epoch, 0)
    with Reporter("logical branch", remaining * batches_per_epoch, unit="steps", enabled=progress) as report:
        for epoch in range(start_epoch, tc.epochs):
            if decision.stop:  # also a resumed run whose recorded losses already say stop
                break
            record = _train_epoch(net, optimizer, images, cfg, epoch, report, on_step)
            if validation is not None and monitor is not None:
                record["validation_loss"] = validation_loss(net, validation, cfg)
                record["pseudo_auroc"] = monitor.auroc(net)
            history.append(record)
            decision = _decision(history, cfg, validation is not None)
            if decision.best_epoch == epoch + 1:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            report.note(_epoch_line(record, decision, tc.epochs))
            net.eval()
            if on_epoch is not None:
                on_epoch(record, net)
            tensors, opt_meta = optimizer_to_tensors(optimizer)
            tensors.update({f"{MODEL_PREFIX}{k}": v for k, v in net.state_dict().items()})
            if best_state is not None and decision.best_epoch != epoch + 1:
                tensors.update({f"{BEST_PREFIX}{k}": v for k, v in best_state.items()})
            meta = {"epoch": epoch + 1, "history": history, "optimizer": opt_meta, "config": cfg.to_dict()}
            save_tensors(tensors, ckpt_path, meta)
        curve = _curve(history, decision, cfg, validation is not None)
        report.note(_stop_line(curve))

    if curve.stop_reason == STOP_NOT_FINITE and curve.best_epoch is None:
        raise ConfigError(
            f"the logical branch diverged: its validation loss is not finite after epoch {len(history)} and "
            f"no epoch had a finite one; lower the learning rate (--lr, now {tc.lr})"
        )
    if curve.restored_best and best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    save_tensors(net.state_dict(), out_dir / MODEL_FILE, {"config": cfg.to_dict()})
    summary = {**_summary(net, history, out_dir, start_epoch), "device": device.type, "curve": asdict(curve)}
    save_json(summary, out_dir / SUMMARY_FILE)
    return summary


def _decision(history: list[dict[str, Any]], cfg: NpgmfConfig, validated: bool = True) -> StopDecision:
    """The stopping rule on what `train.stop_on` names: the recorded validation losses, or 1 - the
    pseudo-anomaly AUROCs (an epoch without one never improves)."""
    tc = cfg.train
    if tc.stop_on == "pseudo_auroc":
        losses = [1.0 - _finite_or_nan(h.get("pseudo_auroc")) for h in history]
    else:
        losses = [_finite_or_nan(h.get("validation_loss")) for h in history]
    enabled = tc.early_stopping and validated and bool(history) and "validation_loss" in history[-1]
    return decide(losses, patience=tc.patience, min_delta=tc.min_delta, max_epochs=tc.epochs, enabled=enabled)


def _finite_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _resumed_best_state(
    tensors: dict[str, torch.Tensor],
    model_state: dict[str, torch.Tensor],
    decision: StopDecision,
    epoch: int,
    ckpt: Path,
) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights a checkpoint holds: its model when that epoch was the best, else `best.*`."""
    if decision.best_epoch is None:
        return None
    if decision.best_epoch == epoch:
        return {k: v.clone() for k, v in model_state.items()}
    best = {k[len(BEST_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BEST_PREFIX)}
    if not best:
        raise CheckpointError(
            f"{ckpt} records epoch {decision.best_epoch} as the best but holds no weights of it; "
            "train into a new --out folder"
        )
    return best


@torch.no_grad()
def validation_loss(net: NpgmfLogicalNet, images: ImageTensorDataset, cfg: NpgmfConfig) -> float | None:
    """The training loss (all terms, weighted) over `images`, in eval mode and without gradients: what
    early stopping watches. None when it is not finite."""
    device = next(net.parameters()).device
    net.eval()
    total, size = 0.0, cfg.train.batch_size
    for start in range(0, len(images), size):
        batch = list(range(start, min(start + size, len(images))))
        loss = logical_loss(net.forward_train(_stack(images, batch, device)), cfg.logical)
        total += float(loss.total) * len(batch)
    mean = total / len(images)
    return mean if math.isfinite(mean) else None


def _curve(
    history: list[dict[str, Any]], decision: StopDecision, cfg: NpgmfConfig, validated: bool
) -> TrainingCurve:
    tc = cfg.train
    reason = decision.reason or STOP_CAP
    if reason == STOP_CAP and tc.early_stopping and not validated:
        reason = STOP_NO_VALIDATION
    restore = tc.early_stopping and decision.best_epoch is not None and decision.best_epoch != len(history)
    return TrainingCurve(
        train_loss=[h["loss"]["total"] for h in history],
        validation_loss=[h.get("validation_loss") for h in history],
        pseudo_auroc=[h.get("pseudo_auroc") for h in history],
        seconds=[h["seconds"] for h in history],
        best_epoch=decision.best_epoch,
        stopped_after_epoch=len(history),
        stop_reason=reason,
        restored_best=restore,
        early_stopping=tc.early_stopping,
        patience=tc.patience,
        min_delta=tc.min_delta,
        max_epochs=tc.epochs,
        stop_on=tc.stop_on,
    )


def _epoch_line(record: dict[str, Any], decision: StopDecision, cap: int) -> str:
    """One log line per epoch: training loss terms, validation loss, the best epoch so far, seconds."""
    terms = " ".join(f"{k} {v:.4f}" for k, v in record["loss"].items())
    line = f"logical epoch {record['epoch']}/{cap}: {terms}"
    if "validation_loss" in record:
        value, auroc = record["validation_loss"], record.get("pseudo_auroc")
        shown = "not finite" if value is None else f"{value:.4f}"
        shown_auroc = "not finite" if auroc is None else f"{auroc:.4f}"
        line += (
            f" | validation {shown}, pseudo-anomaly AUROC {shown_auroc} (best: epoch {decision.best_epoch})"
        )
    return f"{line} ({record['seconds']:.1f} s)"


def _stop_line(curve: TrainingCurve) -> str:
    """Why training ended and which weights were kept."""
    watched = "pseudo-anomaly AUROC" if curve.stop_on == "pseudo_auroc" else "validation loss"
    why = {
        STOP_PATIENCE: f"{watched} not better by {curve.min_delta:.1%} for {curve.patience} epochs",
        STOP_CAP: f"reached the cap of {curve.max_epochs} epochs",
        STOP_NOT_FINITE: f"{watched} not finite",
        STOP_NO_VALIDATION: f"reached the cap of {curve.max_epochs} epochs (no validation images)",
    }[curve.stop_reason]
    kept = f"epoch {curve.best_epoch}'s (the best)" if curve.restored_best else "the last epoch's"
    return f"logical branch stopped after epoch {curve.stopped_after_epoch}: {why}; keeping {kept} weights"


def _stack(images: ImageTensorDataset, indices: list[int], device: torch.device) -> torch.Tensor:
    """The cached images at `indices` as one (B, 3, S, S) batch on `device`."""
    return torch.stack([images[i] for i in indices]).to(device)


def _train_epoch(
    net: NpgmfLogicalNet,
    optimizer: torch.optim.Optimizer,
    images: ImageTensorDataset,
    cfg: NpgmfConfig,
    epoch: int,
    report: Reporter,
    on_step: StepCallback | None,
) -> dict[str, Any]:
    tc, lg = cfg.train, cfg.logical
    device = next(net.parameters()).device
    start = time.perf_counter()
    net.train()
    lr = epoch_lr(cfg, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    order = torch.randperm(len(images), generator=_epoch_generator(tc.seed, epoch, 0)).tolist()
    batches = [order[i : i + tc.batch_size] for i in range(0, len(order), tc.batch_size)]
    if epoch == 0 and net.quantizers is not None:
        net.init_codebooks(_stack(images, batches[0], device), _epoch_generator(tc.seed, 0, 1))
    for vq in net.quantizers or []:
        vq.reset_usage()
    sums: dict[str, float] = {}
    latents: list[torch.Tensor] = []
    for step, batch in enumerate(batches):
        out = net.forward_train(_stack(images, batch, device))
        loss = logical_loss(out, lg)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        terms = loss.terms()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value * len(batch)
        latents = out.latents
        shown = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
        report.advance(status=f"epoch {epoch + 1}/{tc.epochs} {shown}")
        if on_step is not None:
            on_step(epoch, step)
    usage = net.codebook_usage()
    restarted = []
    if lg.codebook_restart and net.quantizers is not None and epoch + 1 < tc.epochs:
        gen = _epoch_generator(tc.seed, epoch, 2)
        restarted = [vq.restart_dead_codes(z, gen) for vq, z in zip(net.quantizers, latents, strict=True)]
    return {
        "epoch": epoch + 1,
        "loss": {k: v / len(images) for k, v in sums.items()},
        "lr": lr,
        "seconds": time.perf_counter() - start,
        "codes_used": [sum(1 for c in level if c > 0) for level in usage],
        "codes_restarted": restarted,
    }


def _summary(net: NpgmfLogicalNet, history: list[dict], out_dir: Path, start_epoch: int) -> dict[str, Any]:
    trained = history[start_epoch:]
    return {
        "epochs": len(history),
        "resumed_after_epoch": start_epoch if start_epoch else None,
        "final_loss": history[-1]["loss"] if history else {},
        "loss_curve": [h["loss"]["total"] for h in history],
        "seconds_per_epoch": sum(h["seconds"] for h in trained) / len(trained) if trained else None,
        "codebook_usage": net.codebook_usage(),
        "codes_used": history[-1]["codes_used"] if history else [],
        "model": str(out_dir / MODEL_FILE),
    }
