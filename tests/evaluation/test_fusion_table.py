"""The fusion table of `evaluate`: the rule it states matches the mode, the chosen row is marked, and a lift
`auto` left untaken is named with why, there and by `calibrate`."""

from __future__ import annotations

import dataclasses

import pytest

from npgmf_edge.calibration.calibrate import Calibration, FusionCandidate, FusionSelection
from npgmf_edge.evaluation import format_fusion_table
from npgmf_edge.postprocess import BranchStats


def _calibration(mode: str, level: str, weights: tuple[float, float]) -> Calibration:
    candidates = (
        FusionCandidate("pixel", 1.0, 0.0, 0.90, 0.0),
        FusionCandidate("pixel", 1.0, 3.0, 0.80, -0.2),
        FusionCandidate("image", 1.0, 0.5, 0.95, 0.01),
    )
    selection = FusionSelection(mode, 0.005, 0.90, 0.70, 20, 40, candidates)
    stats = BranchStats(0.0, 1.0)
    return Calibration(
        stats, stats, *weights, 4.0, 2.0, 0.01, 20, fusion_level=level, fusion_selection=selection
    )


@pytest.mark.parametrize(
    ("mode", "level", "weights", "chosen_row", "rule"),
    [
        ("auto", "image", (1.0, 0.5), "image 1:0.5 0.950 0.010 *", "beats chance"),
        ("paper", "pixel", (1.0, 3.0), "pixel 1:3 0.800 -0.200 *", "weights as given"),
        ("fixed", "pixel", (1.0, 0.0), "pixel 1:0 0.900 0.000 *", "weights as given"),
    ],
)
def test_the_table_states_its_mode_and_marks_the_chosen_candidate(
    mode: str, level: str, weights: tuple[float, float], chosen_row: str, rule: str
) -> None:
    lines = format_fusion_table(_calibration(mode, level, weights)).splitlines()
    assert lines[0].startswith(f"fusion: {level} level, weights {weights[0]:g}:{weights[1]:g} ({mode}")
    assert rule in lines[0]
    assert "structural 0.900, logical 0.700" in lines[1]
    rows = lines[3:]
    assert [" ".join(row.split()) for row in rows if row.endswith("*")] == [chosen_row]
    assert len(rows) == 3


def test_a_calibration_from_before_the_choice_says_so() -> None:
    old = dataclasses.replace(_calibration("paper", "pixel", (1.0, 3.0)), fusion_selection=None)
    assert (
        format_fusion_table(old)
        == "fusion: pixel level, weights 1:3 (calibrated before fusion was chosen per run)"
    )


ADVICE = "(calibrate on at least 60 validation images)"
CHANCE_TOLD = "40 pseudo-anomalous images it cannot be told from chance"


@pytest.mark.parametrize(
    ("lift_low", "n_normal", "why"),
    [
        (-0.01, 20, f"(lift_low -0.010): on 20 normal and {CHANCE_TOLD} {ADVICE}"),
        (-0.01, 60, f"(lift_low -0.010): on 60 normal and {CHANCE_TOLD}"),
        (0.01, 20, "the logical branch alone was not better than chance"),
    ],
)
def test_a_lift_auto_left_untaken_is_stated_with_why(lift_low: float, n_normal: int, why: str) -> None:
    calibration = _calibration("auto", "pixel", (1.0, 0.0))
    selection = calibration.fusion_selection
    candidates = (*selection.candidates[:2], dataclasses.replace(selection.candidates[2], lift_low=lift_low))
    calibration = dataclasses.replace(
        calibration, fusion_selection=dataclasses.replace(selection, candidates=candidates, n_normal=n_normal)
    )
    last = format_fusion_table(calibration).splitlines()[-1]
    assert last.startswith("not taken: image 1:0.5 gained +0.050 over the structural branch alone")
    assert why in last
    # More images are advised only where the images were too few to tell the gain from chance.
    assert (ADVICE in last) == (lift_low < 0 and n_normal < 60)


@pytest.mark.parametrize(
    ("mode", "level", "weights"), [("auto", "image", (1.0, 0.5)), ("paper", "pixel", (1.0, 3.0))]
)
def test_no_untaken_lift_where_a_fusion_was_kept_or_the_weights_were_given(
    mode: str, level: str, weights: tuple[float, float]
) -> None:
    assert "not taken" not in format_fusion_table(_calibration(mode, level, weights))


def test_calibrate_names_the_lift_auto_left_untaken(cli, tmp_path, monkeypatch) -> None:
    import npgmf_edge.training.run

    kept_alone = _calibration("auto", "pixel", (1.0, 0.0))  # image 1:0.5 gained +0.050, lift_low 0.01
    monkeypatch.setattr(npgmf_edge.training.run, "recalibrate_run", lambda *a, **k: kept_alone)
    code, out, err = cli("calibrate", tmp_path)
    assert code == 0, err
    assert "fusion not taken" in out and "image 1:0.5 gained +0.050" in out
