"""Choosing the fusion on pseudo-anomalies, on hand-made branch maps whose AUROCs are known: a useless
logical branch is dropped, a useful one is kept, pseudo-anomalies that leave no room for a gain give the
logical branch no weight, the least logical weight wins near-ties among the fusions that earned it
(hand-built candidate sets whose answer is known), and every AUROC recorded is scikit-learn's on
independently computed scores."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration.calibrate import Calibration, FusionCandidate
from npgmf_edge.calibration.fusion_choice import (
    LIFT_MARGIN,
    LOGICAL_WEIGHTS,
    TIE_MARGIN,
    _best,
    choose_fusion,
    parse_fusion_weights,
    untaken_lift,
    untaken_lift_text,
)
from npgmf_edge.config import FusionConfig
from npgmf_edge.errors import ConfigError
from npgmf_edge.postprocess import smooth

SIZE = 16


def _maps(n: int, rng: np.random.Generator, spots: np.ndarray, strength: float) -> np.ndarray:
    """n noise maps; map i gets a bright 3x3 spot of `strength` when spots[i]."""
    maps = rng.normal(1.0, 0.1, size=(n, SIZE, SIZE)).astype(np.float32)
    maps[spots, 6:9, 6:9] += strength
    return maps


def _scenario(logical_useful: bool, seed: int = 0):
    """Normal images and pseudo-anomalies, half structural-like (only the structural map sees them) and
    half logical-like (only the logical map sees them, when `logical_useful`)."""
    rng = np.random.default_rng(seed)
    n_normal, n_pseudo = 30, 40
    structural_like = np.arange(n_pseudo) % 2 == 0
    normal = {
        "structural": _maps(n_normal, rng, np.zeros(n_normal, bool), 0.0),
        "logical": _maps(n_normal, rng, np.zeros(n_normal, bool), 0.0),
    }
    pseudo = {
        "structural": _maps(n_pseudo, rng, structural_like, 2.0),
        "logical": _maps(
            n_pseudo, rng, ~structural_like if logical_useful else np.zeros(n_pseudo, bool), 2.0
        ),
    }
    return normal, pseudo


def _auroc(normal_scores: np.ndarray, pseudo_scores: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(pseudo_scores))]
    return roc_auc_score(labels, np.r_[normal_scores, pseudo_scores])


def _branch_max(maps: np.ndarray, sigma: float) -> np.ndarray:
    return smooth(maps, sigma).reshape(len(maps), -1).max(axis=1)


def test_a_useless_logical_branch_gets_no_weight() -> None:
    normal, pseudo = _scenario(logical_useful=False)
    calibration = choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0)
    assert calibration.weight_logical == 0.0
    selection = calibration.fusion_selection
    assert selection.mode == "auto"
    assert selection.logical_auroc < 0.7
    # Structural weight alone scores exactly like the structural branch alone.
    assert calibration.pseudo_auroc == pytest.approx(selection.structural_auroc)


def test_a_useful_logical_branch_is_kept_for_its_lift() -> None:
    normal, pseudo = _scenario(logical_useful=True)
    calibration = choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0)
    selection = calibration.fusion_selection
    assert calibration.weight_logical > 0
    assert calibration.pseudo_auroc > max(selection.structural_auroc, selection.logical_auroc) + 0.1


def test_recorded_aurocs_are_sklearns_on_independent_scores() -> None:
    normal, pseudo = _scenario(logical_useful=True, seed=1)
    sigma = 1.0
    calibration = choose_fusion(normal, pseudo, FusionConfig(mode="paper"), sigma)
    selection = calibration.fusion_selection
    for name in ("structural", "logical"):
        expected = _auroc(_branch_max(normal[name], sigma), _branch_max(pseudo[name], sigma))
        assert getattr(selection, f"{name}_auroc") == pytest.approx(expected)
    # Image level, weight w: standardised branch maxima, weighted, from the normal images' statistics.
    s_n, s_p = _branch_max(normal["structural"], sigma), _branch_max(pseudo["structural"], sigma)
    l_n, l_p = _branch_max(normal["logical"], sigma), _branch_max(pseudo["logical"], sigma)
    for c in selection.candidates:
        if c.level != "image":
            continue
        fused_n = (s_n - s_n.mean()) / s_n.std() + c.weight_logical * (l_n - l_n.mean()) / l_n.std()
        fused_p = (s_p - s_n.mean()) / s_n.std() + c.weight_logical * (l_p - l_n.mean()) / l_n.std()
        assert c.auroc == pytest.approx(_auroc(fused_n, fused_p), abs=1e-6)
    levels = {(c.level, c.weight_logical) for c in selection.candidates}
    assert levels == {(level, w) for level in ("pixel", "image") for w in LOGICAL_WEIGHTS}


def test_paper_and_fixed_modes_keep_their_weights_at_pixel_level() -> None:
    normal, pseudo = _scenario(logical_useful=False)
    paper = choose_fusion(normal, pseudo, FusionConfig(mode="paper"), sigma=1.0)
    assert (paper.fusion_level, paper.weight_structural, paper.weight_logical) == ("pixel", 1.0, 3.0)
    fixed = choose_fusion(normal, pseudo, FusionConfig(mode="fixed", weight_logical=0.7), sigma=1.0)
    assert (fixed.fusion_level, fixed.weight_logical) == ("pixel", 0.7)
    assert np.isnan(fixed.pseudo_auroc)  # 0.7 is not on the grid: measured only for the grid


def test_saturated_pseudo_anomalies_give_the_logical_branch_no_weight() -> None:
    # Both branches find every pseudo-anomaly: no fusion can show a gain over the structural branch, so
    # the logical branch has not earned weight (on the magnetic-tile set the paper's 1:3 then cost 0.2).
    rng = np.random.default_rng(2)
    normal = {
        "structural": _maps(20, rng, np.zeros(20, bool), 0.0),
        "logical": _maps(20, rng, np.zeros(20, bool), 0.0),
    }
    everywhere = np.ones(20, bool)
    pseudo = {"structural": _maps(20, rng, everywhere, 5.0), "logical": _maps(20, rng, everywhere, 5.0)}
    calibration = choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0)  # every candidate is perfect
    assert all(c.auroc == 1.0 for c in calibration.fusion_selection.candidates)
    assert (calibration.fusion_level, calibration.weight_logical) == ("pixel", 0.0)
    assert calibration.fusion_selection.margin == TIE_MARGIN


def _candidates(structural: float, scored: dict[tuple[str, float], tuple[float, float]]) -> list:
    """The full grid: the structural branch alone at `structural` AUROC, the candidates in `scored` at
    their (AUROC, lift_low), every other one 0.5 (no lift)."""
    out = []
    for level in ("pixel", "image"):
        for w in LOGICAL_WEIGHTS:
            auroc, low = (structural, 0.0) if w == 0.0 else scored.get((level, w), (0.5, -0.4))
            out.append(FusionCandidate(level, 1.0, w, auroc, low))
    return out


@pytest.mark.parametrize(
    ("structural", "scored", "expected"),
    [
        # a smaller logical weight within TIE_MARGIN (0.004 < 0.005) of the best image level: kept
        (0.90, {("image", 0.5): (0.966, 0.01), ("image", 1.0): (0.970, 0.01)}, ("image", 0.5)),
        # ... 0.006 below it: the best (image 1:1)
        (0.90, {("image", 0.5): (0.964, 0.01), ("image", 1.0): (0.970, 0.01)}, ("image", 1.0)),
        # the paper's weights within the margin of the best win nothing: the least weight near it does
        (0.90, {("image", 1.0): (0.970, 0.01), ("image", 3.0): (0.972, 0.01)}, ("image", 1.0)),
        # image 1:0.25 is 0.006 below the best (1:0.5): the least weight within the margin is 0.5
        (
            0.90,
            {("image", 0.25): (0.966, 0.01), ("image", 0.5): (0.972, 0.01), ("image", 1.0): (0.970, 0.01)},
            ("image", 0.5),
        ),
        # an image-level candidate that earned weight goes before a better pixel-level one
        (0.90, {("pixel", 1.0): (0.990, 0.01), ("image", 0.5): (0.950, 0.01)}, ("image", 0.5)),
        # no image-level candidate earned it: the best pixel-level one
        (0.90, {("pixel", 1.0): (0.970, 0.01), ("pixel", 3.0): (0.960, 0.01)}, ("pixel", 1.0)),
        # exact ties: the first in grid order (smaller weights first)
        (0.90, {("pixel", 0.5): (0.95, 0.01), ("pixel", 3.0): (0.95, 0.01)}, ("pixel", 0.5)),
        (0.90, {("image", 0.5): (0.95, 0.01), ("image", 1.0): (0.95, 0.01)}, ("image", 0.5)),
        # a smaller weight at image level ties but its gain is chance (lift_low < 0): the pixel level's
        (0.90, {("pixel", 1.0): (0.950, 0.02), ("image", 0.25): (0.951, -0.01)}, ("pixel", 1.0)),
        # a gain of 0.004 (< LIFT_MARGIN) is no gain: the structural branch alone
        (0.90, {("pixel", 3.0): (0.904, 0.001), ("image", 3.0): (0.904, 0.001)}, ("pixel", 0.0)),
        # large gains that are chance everywhere: the structural branch alone
        (0.80, {("pixel", 1.0): (0.90, -0.02), ("image", 3.0): (0.92, -0.05)}, ("pixel", 0.0)),
        # the structural branch alone already perfect: nothing can gain
        (1.00, {("pixel", 3.0): (1.0, 0.0), ("image", 3.0): (1.0, 0.0)}, ("pixel", 0.0)),
    ],
)
def test_the_rule_on_hand_built_candidates(structural, scored, expected) -> None:
    level, w_s, w_l = _best(_candidates(structural, scored), logical_low=0.7)
    assert (level, w_l) == expected and w_s == 1.0


@pytest.mark.parametrize(("logical_low", "expected"), [(0.49, 0.0), (0.5, 0.0), (0.51, 1.0)])
def test_a_logical_branch_no_better_than_chance_gets_no_weight_whatever_the_fusions_gain(
    logical_low: float, expected: float
) -> None:
    # A randomised logical branch (make-data seed 1, 40 pseudo-anomalies) found them at AUROC 0.45, yet
    # pixel 1:1 ranked them 0.019 better than the structural branch alone with lift_low 0: noise that
    # happened to help. The branch alone must beat chance before any fusion counts.
    candidates = _candidates(0.96, {("pixel", 1.0): (0.979, 0.0)})
    assert _best(candidates, logical_low) == ("pixel", 1.0, expected)


def test_a_lift_too_small_to_tell_from_chance_on_few_images_is_left_untaken_and_named() -> None:
    # 6 normal and 6 pseudo-anomalous images, the logical branch faintly seeing the logical-like half:
    # fusions gain on them, but 6 + 6 images cannot tell that gain from chance.
    rng = np.random.default_rng(0)
    structural_like = np.arange(6) % 2 == 0
    normal = {name: _maps(6, rng, np.zeros(6, bool), 0.0) for name in ("structural", "logical")}
    pseudo = {
        "structural": _maps(6, rng, structural_like, 2.0),
        "logical": _maps(6, rng, ~structural_like, 0.2),
    }
    calibration = choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0)
    assert calibration.weight_logical == 0.0
    candidates = calibration.fusion_selection.candidates
    alone = next(c for c in candidates if (c.level, c.weight_logical) == ("pixel", 0.0))
    best = max(candidates, key=lambda c: c.auroc)
    assert best.auroc >= alone.auroc + LIFT_MARGIN and best.lift_low < 0
    assert untaken_lift(calibration) == best
    assert "cannot be told from chance" in untaken_lift_text(calibration)
    # Where auto kept a fusion, or the weights were given, nothing was left untaken.
    assert untaken_lift(choose_fusion(*_scenario(logical_useful=True), FusionConfig(), 1.0)) is None
    assert untaken_lift(choose_fusion(normal, pseudo, FusionConfig(mode="paper"), 1.0)) is None


def test_the_threshold_is_set_on_the_chosen_fusions_scores() -> None:
    normal, pseudo = _scenario(logical_useful=True)
    calibration = choose_fusion(normal, pseudo, FusionConfig(false_alarm_rate=0.0), sigma=1.0)
    scores = calibration.post(normal["structural"], normal["logical"])[1]
    assert calibration.threshold == pytest.approx(scores.max())


def test_a_calibration_round_trips_through_its_dict() -> None:
    normal, pseudo = _scenario(logical_useful=True)
    calibration = choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0)
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_a_calibration_from_before_the_choice_reads_as_the_papers_pixel_fusion() -> None:
    normal, pseudo = _scenario(logical_useful=True)
    legacy = calibration_dict = choose_fusion(normal, pseudo, FusionConfig(mode="paper"), sigma=1.0).to_dict()
    for key in ("fusion_level", "structural_image", "logical_image", "fusion_selection"):
        del calibration_dict[key]
    old = Calibration.from_dict(legacy)
    assert old.fusion_level == "pixel" and old.fusion_selection is None and old.weight_logical == 3.0
    with pytest.raises(ValueError, match="missing keys"):
        Calibration.from_dict({**legacy, "fusion_level": "pixel"})  # half-new: neither old nor new


def test_an_image_level_calibration_without_image_statistics_is_refused() -> None:
    normal, pseudo = _scenario(logical_useful=True)
    data = dataclasses.replace(
        choose_fusion(normal, pseudo, FusionConfig(), sigma=1.0), fusion_level="image", logical_image=None
    ).to_dict()
    with pytest.raises(ValueError, match="image statistics"):
        Calibration.from_dict(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("auto", ("auto", 1.0, 3.0)), ("paper", ("paper", 1.0, 3.0)), ("1:0.5", ("fixed", 1.0, 0.5))],
)
def test_fusion_weights_option_parses(text: str, expected: tuple) -> None:
    assert parse_fusion_weights(text) == expected


@pytest.mark.parametrize("text", ["", "1", "1:2:3", "a:b", "-1:2", "0:0", "nan:1", "inf:1"])
def test_fusion_weights_option_refuses_bad_values(text: str) -> None:
    with pytest.raises(ConfigError, match="--fusion-weights"):
        parse_fusion_weights(text)


def test_the_bootstrap_auroc_of_many_rows_is_sklearns_with_ties() -> None:
    from npgmf_edge.calibration.fusion_choice import _auroc_rows

    rng = np.random.default_rng(9)
    normal = rng.integers(0, 5, (4, 7)).astype(float)  # few distinct values: many ties
    pseudo = rng.integers(2, 7, (4, 9)).astype(float)
    expected = [_auroc(n, p) for n, p in zip(normal, pseudo, strict=True)]
    assert np.allclose(_auroc_rows(normal, pseudo), expected)


def test_train_refuses_bad_fusion_weights_in_one_line_before_reading_data(cli, tmp_path) -> None:
    code, _, err = cli("train", tmp_path, "--fusion-weights", "1:2:3", "--out", tmp_path / "run")
    assert code != 0 and err.count("\n") == 1 and "--fusion-weights" in err
    assert not (tmp_path / "run").exists()
