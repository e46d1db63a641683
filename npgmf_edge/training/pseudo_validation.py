"""The logical branch's image AUROC on pseudo-anomalies of the validation images, measured after each epoch.

The validation loss keeps falling while the branch's AUROC on real anomalies peaks and sinks
(docs/BENCHMARKS.md, "Logical branch: epochs to convergence"): a loss over good images cannot see the
decoder learning to reproduce anomalies. So this scores the pseudo-anomalies calibration chooses the
fusion on (`calibration.pseudo_anomalies`, same seed), made once before training, by the max of the
branch's smoothed map, as `evaluate` scores a branch.

Example:
    >>> monitor = PseudoValidation.from_samples(dataset.validation, cfg)
    >>> monitor.auroc(net)   # after an epoch, net in eval mode
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration.pseudo_anomalies import make_pseudo_anomalies
from npgmf_edge.config import NpgmfConfig
from npgmf_edge.data import Sample, read_image
from npgmf_edge.postprocess import branch_image_scores, gaussian_sigma_for
from npgmf_edge.preprocess import to_model_input

BATCH = 16


@dataclass(frozen=True)
class PseudoValidation:
    """Model-ready validation images and their pseudo-anomalies, with the smoothing of the run."""

    normal: torch.Tensor  # (N, 3, S, S) float32, pixels in [0, 255]
    pseudo: torch.Tensor  # (P, 3, S, S)
    sigma: float

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], cfg: NpgmfConfig) -> PseudoValidation:
        """As `training.run.calibrate_run` makes them: at the model's input size, seeded by the run."""
        size = cfg.image_size
        images = [
            to_model_input(read_image(s.image_path), size).transpose(1, 2, 0).astype(np.uint8)
            for s in samples
        ]
        pseudo = make_pseudo_anomalies(images, seed=cfg.train.seed, per_image=cfg.fusion.pseudo_per_image)
        return cls(
            normal=_stack([to_model_input(image, size) for image in images], size),
            pseudo=_stack([to_model_input(p.image, size) for p in pseudo], size),
            sigma=gaussian_sigma_for(size, cfg.fusion.gaussian_sigma),
        )

    @torch.no_grad()
    def auroc(self, net: torch.nn.Module) -> float | None:
        """Image AUROC of the logical network `net` (eval mode), pseudo-anomalies against the normal
        images; None when a score is not finite."""
        scores = [_scores(net, images, self.sigma) for images in (self.normal, self.pseudo)]
        values = np.concatenate(scores)
        if not np.isfinite(values).all():
            return None
        labels = np.r_[np.zeros(len(scores[0])), np.ones(len(scores[1]))]
        value = float(roc_auc_score(labels, values))
        return value if math.isfinite(value) else None


def _stack(arrays: list[np.ndarray], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, size, size)


def _scores(net: torch.nn.Module, images: torch.Tensor, sigma: float) -> np.ndarray:
    device = next(net.parameters()).device
    maps = [
        net(images[i : i + BATCH].to(device))[:, 0].float().cpu().numpy()
        for i in range(0, len(images), BATCH)
    ]
    return branch_image_scores(np.concatenate(maps), sigma)
