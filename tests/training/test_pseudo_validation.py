"""The logical branch's pseudo-anomaly AUROC per epoch: measured on calibration's own pseudo-anomalies of
the validation images, and equal to scikit-learn's AUROC of independently computed image scores."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration.pseudo_anomalies import make_pseudo_anomalies
from npgmf_edge.config import get_preset
from npgmf_edge.data import load_dataset, read_image
from npgmf_edge.preprocess import to_model_input
from npgmf_edge.training.pseudo_validation import PseudoValidation


class MeanBrightness(torch.nn.Module):
    """A stand-in logical network whose map is constant per image: its mean pixel value. Smoothing keeps a
    constant map constant, so an image's score is exactly that mean."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean(dim=(1, 2, 3))
        return mean[:, None, None, None].expand(-1, 1, *pixels.shape[-2:])


def test_the_auroc_is_sklearns_on_calibrations_own_pseudo_anomalies(loco_dataset_dir: Path) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = get_preset("tiny")
    cfg.image_size, cfg.train.seed, cfg.fusion.pseudo_per_image = 64, 3, 2
    monitor = PseudoValidation.from_samples(dataset.validation, cfg)

    # The reference: calibrate_run's recipe written out (uint8 images at the input size, the run's seed).
    images = [
        to_model_input(read_image(s.image_path), 64).transpose(1, 2, 0).astype(np.uint8)
        for s in dataset.validation
    ]
    pseudo = make_pseudo_anomalies(images, seed=3, per_image=2)
    normal_means = [float(image.astype(np.float64).mean()) for image in images]
    pseudo_means = [float(p.image.astype(np.float64).mean()) for p in pseudo]
    labels = np.r_[np.zeros(len(images)), np.ones(len(pseudo))]
    expected = roc_auc_score(labels, np.r_[normal_means, pseudo_means])

    assert len(monitor.normal) == len(images) and len(monitor.pseudo) == 2 * len(images)
    assert monitor.auroc(MeanBrightness()) == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 1.0  # a value the check can miss, not a saturated one


def test_a_non_finite_score_gives_none(loco_dataset_dir: Path) -> None:
    dataset = load_dataset(loco_dataset_dir)
    cfg = get_preset("tiny")
    cfg.image_size = 64
    monitor = PseudoValidation.from_samples(dataset.validation, cfg)

    class Diverged(MeanBrightness):
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return super().forward(pixels) * float("nan")

    assert monitor.auroc(Diverged()) is None
