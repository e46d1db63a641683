"""Image AUROC (scikit-learn) and pixel AUROC (Mann-Whitney, checked against scikit-learn)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from npgmf_edge.metrics import image_auroc, pixel_auroc


def test_image_auroc_matches_sklearn_with_ties() -> None:
    labels = [0, 0, 0, 1, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.4, 0.4, 0.9, 0.2, 0.05, 0.9]
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize("label", [0, 1])
def test_image_auroc_with_one_class_says_what_is_missing(label) -> None:
    kind = "anomalous" if label else "normal"
    message = f"image AUROC needs both normal and anomalous images; all 3 are {kind}"
    with pytest.raises(ValueError, match=message):
        image_auroc([label] * 3, [0.1, 0.2, 0.3])


def test_image_auroc_rejects_bad_labels_and_scores() -> None:
    with pytest.raises(ValueError, match="labels must be"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, float("nan")])


@pytest.mark.parametrize("levels", [None, 4])
def test_pixel_auroc_matches_sklearn_on_random_maps(levels) -> None:
    rng = np.random.default_rng(3)
    maps = [rng.random((9, 7)).astype(np.float32) for _ in range(5)]
    if levels:
        maps = [np.round(m * levels) / levels for m in maps]
    masks = [None, None] + [rng.random((9, 7)) < 0.2 for _ in range(3)]
    labels = np.concatenate([np.zeros(63, bool) if m is None else m.ravel() for m in masks])
    expected = roc_auc_score(labels, np.concatenate([m.ravel() for m in maps]))
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_needs_defect_pixels() -> None:
    with pytest.raises(ValueError, match="all pixels are normal"):
        pixel_auroc([np.zeros((2, 2))], [None])
