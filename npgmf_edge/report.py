"""The evaluation report: ROC curves and score histograms (good vs anomalous) as PNGs, the logical branch's
training curve, and an HTML page.

matplotlib (a training-install dependency) renders the charts off-screen with the Agg backend.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from npgmf_edge.training.early_stopping import TrainingCurve


def _save(fig: plt.Figure, path: Path) -> Path:
    """Lay out, write and release a figure (pyplot keeps every open figure alive until closed)."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc_curves(labels: np.ndarray, scores_by_branch: Mapping[str, np.ndarray], path: Path) -> Path:
    """One ROC curve per branch on shared axes, AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for branch, scores in scores_by_branch.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{branch} (AUROC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Image-level ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_score_histogram(
    labels: np.ndarray, scores: np.ndarray, threshold: float | None, title: str, path: Path
) -> Path:
    """Overlaid histograms of good and anomalous image scores, with the verdict threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.histogram_bin_edges(scores, bins=30)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good", color="tab:green")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomalous", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="image score", ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def plot_training_curve(curve: TrainingCurve, path: Path) -> Path:
    """The logical branch's training and validation loss per epoch and, on a second axis, its AUROC on the
    validation pseudo-anomalies; the best epoch (by what early stopping watched) marked, why it stopped
    in the title."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = np.arange(1, len(curve.train_loss) + 1)
    lines = ax.plot(epochs, curve.train_loss, marker=".", label="training loss")
    validation = np.array([np.nan if v is None else v for v in curve.validation_loss], dtype=float)
    if np.isfinite(validation).any():
        lines += ax.plot(epochs, validation, marker=".", label="validation loss (good images)")
    pseudo = np.array([np.nan if v is None else v for v in curve.pseudo_auroc], dtype=float)
    if len(pseudo) == len(epochs) and np.isfinite(pseudo).any():
        right = ax.twinx()
        lines += right.plot(epochs, pseudo, marker=".", color="tab:green", label="pseudo-anomaly AUROC")
        right.set(ylabel="AUROC", ylim=(min(0.5, np.nanmin(pseudo)) - 0.02, 1.02))
    if curve.best_epoch is not None:
        label = f"best epoch {curve.best_epoch}" + (" (weights kept)" if curve.restored_best else "")
        lines.append(ax.axvline(curve.best_epoch, color="black", linestyle="--", label=label))
    watched = "pseudo-anomaly AUROC" if curve.stop_on == "pseudo_auroc" else "validation loss"
    ax.set(xlabel="epoch", ylabel="loss")
    ax.set_title(
        f"Logical branch: stopped after epoch {curve.stopped_after_epoch} ({curve.stop_reason}),\n"
        f"early stopping watching the {watched}",
        fontsize="medium",
    )
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
    return _save(fig, path)


def write_html_report(
    path: Path,
    title: str,
    table_text: str,
    figures: Sequence[Path],
    overlays: Sequence[Path],
    results: dict,
    training_curve: Path | None = None,
) -> Path:
    """A single self-explanatory page linking the charts and overlays (relative paths)."""
    base = path.parent

    def rel(p: Path) -> str:
        return html.escape(str(Path(p).resolve().relative_to(base.resolve())))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;margin:4px}"
        ".grid img{width:256px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(table_text)}</pre>",
        "<h2>Charts</h2>",
        *[f"<img src='{rel(f)}'>" for f in figures],
        *(
            ["<h2>Training curve (logical branch)</h2>", f"<img src='{rel(training_curve)}'>"]
            if training_curve is not None
            else []
        ),
        "<h2>Overlays</h2><div class='grid'>",
        *[f"<a href='{rel(o)}'><img src='{rel(o)}' title='{rel(o)}'></a>" for o in overlays],
        "</div><h2>Raw results</h2>",
        f"<pre>{html.escape(json.dumps(results, indent=2, default=str))}</pre></body></html>",
    ]
    path.write_text("\n".join(parts))
    return path
