"""Choose the fusion weights and level of a run on pseudo-anomalies of its validation images.

Measured on real parts, the paper's fixed 1:3 at pixel level can lose to the structural branch alone
(issue 23). So calibration scores a small grid, logical weight w in `LOGICAL_WEIGHTS` (structural 1) at
both levels ("pixel": max of Eq. 11's map; "image": the weighted standardised branch image scores), by image
AUROC on the pseudo-anomalies against the normal validation images. The logical branch must earn its
weight: alone, it must find the pseudo-anomalies better than chance (its AUROC above `CHANCE` in all but
`LIFT_QUANTILE` of `BOOTSTRAP_ROUNDS` bootstrap resamples), and a candidate must gain at least
`LIFT_MARGIN` over the structural branch alone, not by chance (>= 0 in all but `LIFT_QUANTILE` of the
same paired resamples, recorded as `lift_low`). Of those, the image-level ones go first if any: the
pseudo-anomalies are local, so their peaks coincide in both maps and favour the max of a fused map,
while on real test sets image-level fusion ranked at least as well at the same weight. The best of that
pool sets the bar and the least logical weight within `TIE_MARGIN` of it is kept: pseudo-anomalies rank
logical-heavy fusions too high (the paper's 1:3, preferred on such ties before, cost a make-data test
0.039 when calibrated on 120 validation images), so among near-equals the one leaning least on it, as
the one-standard-error rule keeps the simplest model. With none, the structural branch alone. Modes
"paper" and "fixed" keep their weights at pixel level, AUROCs still recorded. docs/DESIGN.md ("Run
directory, fusion and calibration") has the measurements behind each rule.

Example:
    >>> calibration = choose_fusion(normal_maps, pseudo_maps, cfg.fusion, sigma)
    >>> calibration.fusion_level, calibration.weight_logical, calibration.fusion_selection.candidates
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from npgmf_edge.calibration.calibrate import Calibration, FusionCandidate, FusionSelection, calibrate
from npgmf_edge.config import FUSION_MODES, FusionConfig
from npgmf_edge.errors import ConfigError
from npgmf_edge.postprocess import FUSION_LEVELS, branch_image_scores

PAPER_WEIGHTS = (1.0, 3.0)  # w_S : w_L of the paper (Xu et al. 2025, on MVTec LOCO)
LOGICAL_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 3.0)  # with structural weight 1; 0 = structural alone, 3 = paper's
TIE_MARGIN = 0.005  # pseudo-anomaly AUROC within which a smaller logical weight beats the best
BOOTSTRAP_ROUNDS = 200  # paired resamples of normal and pseudo images for the chance level of a gain
LIFT_QUANTILE = 0.05  # a gain over the structural branch alone counts when this quantile of it is >= 0
LIFT_MARGIN = 0.005  # ... and the gain itself is at least this
CHANCE = 0.5  # the logical branch alone must beat this AUROC in the same quantile of resamples
BOOTSTRAP_SEED = 0
# Below this many normal validation images a gain of about 0.02 is rarely told from chance, so `auto`
# keeps the structural branch alone where a fusion would have lifted it (docs/BENCHMARKS.md, "make-data
# with 60 validation images": on 20, two of four make-data seeds kept no lift; MVTec LOCO has 62-122).
ADVISED_VALIDATION_IMAGES = 60

log = logging.getLogger(__name__)


def parse_fusion_weights(text: str) -> tuple[str, float, float]:
    """`--fusion-weights` -> (mode, w_S, w_L): "auto", "paper" (1:3) or "S:L" (mode "fixed")."""
    if text in ("auto", "paper"):
        return (text, *PAPER_WEIGHTS)
    parts = text.split(":")
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        weights = ()
    if len(weights) != 2 or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
        raise ConfigError(
            f"--fusion-weights must be auto, paper or S:L with two finite numbers >= 0, not both 0 "
            f"(e.g. 1:0.5), got {text!r}"
        )
    return ("fixed", *weights)


def _auroc(normal: np.ndarray, pseudo: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(pseudo))]
    scores = np.r_[normal, pseudo]
    if not np.isfinite(scores).all():
        raise ConfigError(
            "a branch gave non-finite scores on the validation images; the run cannot be calibrated"
        )
    return float(roc_auc_score(labels, scores))


def choose_fusion(
    normal: dict[str, np.ndarray], pseudo: dict[str, np.ndarray], fusion: FusionConfig, sigma: float
) -> Calibration:
    """The run's calibration with its fusion chosen as `fusion.mode` says, from raw (N, H, W) branch maps
    ("structural", "logical") of the normal validation images and of their pseudo-anomalies."""
    if fusion.mode not in FUSION_MODES:
        raise ConfigError(f"fusion.mode must be one of {FUSION_MODES}, got {fusion.mode!r}")
    if len(pseudo["structural"]) == 0:
        raise ConfigError("choosing the fusion needs at least one pseudo-anomaly")
    if fusion.mode == "auto" and len(normal["structural"]) < ADVISED_VALIDATION_IMAGES:
        log.warning(
            "auto fusion chooses on %d validation images: with fewer than %d, a lift of about 0.02 from "
            "the logical branch is rarely told from chance, so the structural branch may be kept alone",
            len(normal["structural"]),
            ADVISED_VALIDATION_IMAGES,
        )
    base = calibrate(normal["structural"], normal["logical"], fusion, sigma)
    grid = [(level, w) for level in FUSION_LEVELS for w in LOGICAL_WEIGHTS]
    scores = []  # per candidate: (normal scores, pseudo scores)
    for level, w in grid:
        trial = dataclasses.replace(base, fusion_level=level, weight_structural=1.0, weight_logical=w)
        scores.append(
            (
                trial.post(normal["structural"], normal["logical"])[1],
                trial.post(pseudo["structural"], pseudo["logical"])[1],
            )
        )
    branch_scores = {
        name: (branch_image_scores(normal[name], sigma), branch_image_scores(pseudo[name], sigma))
        for name in ("structural", "logical")
    }
    resampled = _bootstrap_aurocs([*scores, branch_scores["logical"]])  # (rounds, candidates + 1)
    reference = grid.index(("pixel", 0.0))
    gains = resampled[:, : len(grid)] - resampled[:, reference : reference + 1]
    lift_low = np.quantile(gains, LIFT_QUANTILE, axis=0)
    logical_low = float(np.quantile(resampled[:, -1], LIFT_QUANTILE))
    candidates = [
        FusionCandidate(level, 1.0, w, _auroc(*pair), float(low))
        for (level, w), pair, low in zip(grid, scores, lift_low, strict=True)
    ]
    branch_auroc = {name: _auroc(*pair) for name, pair in branch_scores.items()}
    if fusion.mode == "auto":
        level, w_s, w_l = _best(candidates, logical_low)
    else:
        level, w_s, w_l = "pixel", fusion.weight_structural, fusion.weight_logical
    selection = FusionSelection(
        mode=fusion.mode,
        margin=TIE_MARGIN,
        structural_auroc=branch_auroc["structural"],
        logical_auroc=branch_auroc["logical"],
        n_normal=len(normal["structural"]),
        n_pseudo=len(pseudo["structural"]),
        candidates=tuple(candidates),
    )
    choice = dataclasses.replace(
        base, fusion_level=level, weight_structural=w_s, weight_logical=w_l, fusion_selection=selection
    )
    return calibrate(normal["structural"], normal["logical"], fusion, sigma, choice)


def _bootstrap_aurocs(scores: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(BOOTSTRAP_ROUNDS, len(scores)) AUROCs of each (normal, pseudo) score pair on paired bootstrap
    resamples: the same resampled images score every pair, so differences between columns are paired."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n_normal, n_pseudo = len(scores[0][0]), len(scores[0][1])
    pick_n = rng.integers(0, n_normal, (BOOTSTRAP_ROUNDS, n_normal))
    pick_p = rng.integers(0, n_pseudo, (BOOTSTRAP_ROUNDS, n_pseudo))
    return np.stack([_auroc_rows(normal[pick_n], pseudo[pick_p]) for normal, pseudo in scores], axis=1)


def _auroc_rows(normal: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """AUROC of each row pair, (R, N) normal vs (R, P) pseudo scores: the Mann-Whitney statistic from
    average ranks (ties count half), what `roc_auc_score` computes, for many resamples at once."""
    ranks = rankdata(np.concatenate([normal, pseudo], axis=1), axis=1)
    n, p = normal.shape[1], pseudo.shape[1]
    return (ranks[:, n:].sum(axis=1) - p * (p + 1) / 2) / (n * p)


def _best(candidates: list[FusionCandidate], logical_low: float) -> tuple[str, float, float]:
    """With a logical branch better than chance (`logical_low`, the bootstrap lower bound of its own
    AUROC, above `CHANCE`): of the candidates whose gain over the structural branch alone is large enough
    and not chance, the image-level ones if any, else the pixel-level ones; of those, the least logical
    weight within the margin of the best. Otherwise that branch alone."""
    structural = _structural_alone(candidates)
    earned = logical_low > CHANCE
    lifted = [c for c in candidates if earned and c.lift_low >= 0.0 and _gains_margin(c, structural)]
    if not lifted:
        return structural.level, structural.weight_structural, structural.weight_logical
    pool = [c for c in lifted if c.level == "image"] or lifted  # image level first: see the module doc
    best = max(c.auroc for c in pool)
    chosen = min((c for c in pool if c.auroc >= best - TIE_MARGIN), key=lambda c: c.weight_logical)
    return chosen.level, chosen.weight_structural, chosen.weight_logical


def untaken_lift(calibration: Calibration) -> FusionCandidate | None:
    """Where `auto` kept the structural branch alone: the best candidate that still gained at least
    `LIFT_MARGIN` on the pseudo-anomalies, for the user to see what the rule's caution cost (its gain was
    not told from chance, or the logical branch alone was not surely above it). None otherwise."""
    selection = calibration.fusion_selection
    if selection is None or selection.mode != "auto" or calibration.weight_logical != 0.0:
        return None
    structural = _structural_alone(selection.candidates)
    gained = [c for c in selection.candidates if _gains_margin(c, structural)]
    return max(gained, key=lambda c: c.auroc, default=None)


def untaken_lift_text(calibration: Calibration) -> str | None:
    """`untaken_lift` in words, with why it was not taken."""
    untaken = untaken_lift(calibration)
    if untaken is None:
        return None
    selection = calibration.fusion_selection
    gain = untaken.auroc - _structural_alone(selection.candidates).auroc
    if untaken.lift_low < 0.0:
        why = (
            f"its gain's lower bound is below 0 (lift_low {untaken.lift_low:.3f}): on {selection.n_normal} "
            f"normal and {selection.n_pseudo} pseudo-anomalous images it cannot be told from chance"
        )
        if selection.n_normal < ADVISED_VALIDATION_IMAGES:
            why += f" (calibrate on at least {ADVISED_VALIDATION_IMAGES} validation images)"
    else:
        why = "the logical branch alone was not better than chance in enough resamples"
    return (
        f"{untaken.level} {untaken.weight_structural:g}:{untaken.weight_logical:g} gained "
        f"{gain:+.3f} over the structural branch alone, but {why}"
    )


def _gains_margin(candidate: FusionCandidate, structural: FusionCandidate) -> bool:
    """The rule's "large enough" gain over the structural branch alone, shared with what it reports."""
    return candidate.auroc >= structural.auroc + LIFT_MARGIN


def _structural_alone(candidates: Sequence[FusionCandidate]) -> FusionCandidate:
    return next(c for c in candidates if c.level == "pixel" and c.weight_logical == 0.0)
