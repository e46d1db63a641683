"""make-data: scene rules, determinism, mask/defect-config consistency, safe writing, CLI round trip."""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from npgmf_edge.cli import main
from npgmf_edge.data import load_dataset, read_defect_regions, read_image, synthetic, tray_scene
from npgmf_edge.data.synthetic import SyntheticConfig, defects_config, generate_dataset
from npgmf_edge.errors import ConfigError, DatasetError

TINY = SyntheticConfig(image_size=64, n_train=2, n_validation=1, n_test_good=1, n_logical=4, n_structural=3)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _per_compartment(parts: list[tray_scene.Part]) -> list[list[tray_scene.Part]]:
    return [[p for p in parts if p.compartment == i] for i in range(len(tray_scene.COMPARTMENTS))]


def test_good_scenes_obey_every_compartment_rule() -> None:
    for index in range(20):
        groups = _per_compartment(tray_scene.sample_good_scene(np.random.default_rng(index)))
        for compartment, parts in zip(tray_scene.COMPARTMENTS, groups, strict=True):
            assert len(parts) == compartment.count
            assert {p.kind for p in parts} == {compartment.kind}
            assert all(np.abs(np.subtract(p.colour, compartment.colour)).max() <= 8 for p in parts)
            assert len({p.slot for p in parts}) == len(parts)


def test_every_part_fits_its_own_compartment_and_bars_fit_no_other() -> None:
    assert all(c.fits(c.kind) for c in tray_scene.COMPARTMENTS)
    assert [c.fits(tray_scene.BAR) for c in tray_scene.COMPARTMENTS] == [False, False, True]


def test_each_logical_anomaly_breaks_exactly_its_rule() -> None:
    rng = np.random.default_rng(7)
    good = tray_scene.sample_good_scene(rng)
    counts = [len(g) for g in _per_compartment(good)]

    missing, [annotation] = tray_scene.break_rule(rng, good, "missing_part")
    assert sum(counts) - len(missing) == 1 and annotation.compartment is not None

    extra, [annotation] = tray_scene.break_rule(rng, good, "extra_part")
    grown = [i for i, g in enumerate(_per_compartment(extra)) if len(g) == counts[i] + 1]
    assert len(grown) == 1 and annotation.parts[0].compartment == grown[0]

    swapped, annotations = tray_scene.break_rule(rng, good, "swapped_colours")
    assert len(annotations) == 2 and len(swapped) == len(good)
    for region in annotations:
        own = tray_scene.COMPARTMENTS[region.parts[0].compartment].colour
        assert all(np.abs(np.subtract(p.colour, own)).max() > 8 for p in region.parts)

    misplaced, [annotation] = tray_scene.break_rule(rng, good, "misplaced_part")
    moved = annotation.parts[0]
    assert len(misplaced) == len(good)
    assert tray_scene.COMPARTMENTS[moved.compartment].kind != moved.kind


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path) -> None:
    generate_dataset(tmp_path / "a", TINY)
    generate_dataset(tmp_path / "b", TINY)
    generate_dataset(tmp_path / "c", SyntheticConfig(**{**TINY.__dict__, "seed": 1}))
    first, second, other = (_tree_bytes(tmp_path / name) for name in "abc")
    assert first == second
    image = "breakfast_tray/train/good/000.png"
    assert first[image] != other[image]


def test_changing_one_split_count_leaves_the_other_splits_unchanged(tmp_path) -> None:
    generate_dataset(tmp_path / "a", TINY)
    generate_dataset(tmp_path / "b", SyntheticConfig(**{**TINY.__dict__, "n_train": 5}))
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    tests = [name for name in first if "/test/" in name or "/ground_truth/" in name]
    assert tests and all(first[name] == second[name] for name in tests)


def test_good_images_vary_but_share_the_layout(tmp_path) -> None:
    dataset = load_dataset(generate_dataset(tmp_path / "d", TINY)["dataset"])
    first, second = (read_image(s.image_path).astype(int) for s in dataset.train)
    assert first.shape == (64, 64, 3)
    assert np.abs(first - second).mean() > 2  # parts move, light changes
    assert np.abs(first[:, :2] - second[:, :2]).mean() < 12  # the table around the tray stays


def test_masks_match_defects_config_and_the_anomaly_cycle(tmp_path) -> None:
    summary = generate_dataset(tmp_path / "d", TINY)
    dataset = load_dataset(summary["dataset"])
    names = {
        s.image_id: [r.spec.defect_name for r in read_defect_regions(s, dataset.defects_config)]
        for s in dataset.test
        if s.defect_type == "logical_anomalies"
    }
    assert names["000"][0].startswith("missing_") and len(names["000"]) == 1
    assert [names[k] for k in ("001", "002", "003")] == [
        ["extra_part"],
        ["swapped_colours", "swapped_colours"],
        ["misplaced_part"],
    ]
    structural = [s for s in dataset.test if s.defect_type == "structural_anomalies"]
    regions = [read_defect_regions(s, dataset.defects_config) for s in structural]
    assert [[r.spec.defect_name for r in rs] for rs in regions] == [["scratch"], ["stain"], ["chip"]]
    all_regions = [r for s in dataset.test if s.label for r in read_defect_regions(s, dataset.defects_config)]
    assert all(0 < r.area < 64 * 64 for r in all_regions)
    assert Counter(r.spec.defect_name for r in all_regions) == Counter(summary["defects"])


def test_defects_config_mixes_relative_and_absolute_thresholds_with_distinct_values() -> None:
    specs = defects_config(256)
    assert [s.defect_name for s in specs] == [
        "missing_disc",
        "missing_square",
        "missing_bar",
        "extra_part",
        "swapped_colours",
        "misplaced_part",
        "scratch",
        "stain",
        "chip",
    ]
    assert [s.pixel_value for s in specs] == list(range(255, 246, -1))
    absolute = {s.defect_name: s.saturation_threshold for s in specs if not s.relative_saturation}
    assert absolute == {"missing_disc": 623.0, "missing_square": 369.0, "missing_bar": 865.0}
    assert {s.saturation_threshold for s in specs if s.relative_saturation} == {1.0}


def test_summary_and_record_report_what_was_written(tmp_path) -> None:
    out = tmp_path / "d"
    summary = generate_dataset(out, TINY)
    assert summary["dataset"] == str(out / "breakfast_tray")
    assert summary["counts"] == {
        "train/good": 2,
        "validation/good": 1,
        "test/good": 1,
        "test/logical_anomalies": 4,
        "test/structural_anomalies": 3,
    }
    assert sum(summary["defects"].values()) == 8  # 4 logical (swap has two) + 3 structural
    record = json.loads((out / "make_data.json").read_text())
    assert record["config"]["image_size"] == 64 and record["counts"] == summary["counts"]
    assert json.loads(json.dumps(summary)) == summary


def test_zero_count_split_writes_no_folder(tmp_path) -> None:
    generate_dataset(tmp_path / "d", SyntheticConfig(**{**TINY.__dict__, "n_structural": 0}))
    category = tmp_path / "d/breakfast_tray"
    assert not (category / "test/structural_anomalies").exists()
    assert "test/structural_anomalies" not in load_dataset(category).counts()


def test_non_empty_folder_is_not_replaced_without_overwrite(tmp_path) -> None:
    generate_dataset(tmp_path / "d", TINY)
    with pytest.raises(DatasetError) as error:
        generate_dataset(tmp_path / "d", TINY)
    assert str(error.value) == (
        f"{tmp_path / 'd'} already exists and is not empty; "
        "pass overwrite=True (CLI: --overwrite) to replace it"
    )


def test_overwrite_replaces_a_previous_dataset_completely(tmp_path) -> None:
    generate_dataset(tmp_path / "d", TINY)
    (tmp_path / "d/breakfast_tray/stale.txt").write_text("old")
    generate_dataset(tmp_path / "d", TINY, overwrite=True)
    assert not (tmp_path / "d/breakfast_tray/stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no staging or retired folders left


def test_overwrite_never_deletes_a_folder_make_data_did_not_write(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/thesis.tex").write_text("precious")
    with pytest.raises(DatasetError) as error:
        generate_dataset(tmp_path / "d", TINY, overwrite=True)
    assert (
        str(error.value)
        == f"{tmp_path / 'd'} was not written by make-data (no make_data.json); choose another OUT"
    )
    assert (tmp_path / "d/thesis.tex").read_text() == "precious"


def test_an_empty_existing_folder_is_filled(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    assert load_dataset(generate_dataset(tmp_path / "d", TINY)["dataset"]).counts()["train/good"] == 2


def test_a_file_in_the_way_is_refused(tmp_path) -> None:
    (tmp_path / "d").write_text("x")
    with pytest.raises(DatasetError) as error:
        generate_dataset(tmp_path / "d", TINY)
    assert str(error.value) == f"{tmp_path / 'd'} exists and is not a folder; choose another OUT"


def test_a_failure_midway_leaves_the_previous_dataset_untouched(tmp_path, monkeypatch) -> None:
    generate_dataset(tmp_path / "d", TINY)
    before = _tree_bytes(tmp_path / "d")
    writes = []

    def failing_write(path: Path, pixels: np.ndarray) -> None:
        writes.append(path)
        if len(writes) == 5:
            raise OSError("disk full")
        synthetic.cv2.imwrite(str(path), pixels)

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path / "d", SyntheticConfig(**{**TINY.__dict__, "seed": 9}), overwrite=True)
    assert _tree_bytes(tmp_path / "d") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 32}, "image_size must be at least 64 pixels, got 32"),
        ({"n_train": 0}, "n_train must be at least 1, got 0"),
        ({"n_validation": 0}, "n_validation must be at least 1, got 0"),
        (
            {"n_test_good": 0, "n_logical": 0, "n_structural": 0},
            "test counts must be >= 0 with at least one test image, got "
            "{'n_test_good': 0, 'n_logical': 0, 'n_structural': 0}",
        ),
        (
            {"n_logical": -1},
            "test counts must be >= 0 with at least one test image, got "
            "{'n_test_good': 1, 'n_logical': -1, 'n_structural': 3}",
        ),
        ({"category": "a/b"}, "category 'a/b' must be a plain folder name"),
        ({"category": ".."}, "category '..' must be a plain folder name"),
    ],
)
def test_invalid_config_is_refused_before_writing(tmp_path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        generate_dataset(tmp_path / "d", SyntheticConfig(**{**TINY.__dict__, **changes}))
    assert str(error.value) == message
    assert not (tmp_path / "d").exists()


def test_make_data_cli_writes_a_dataset_the_loco_reader_loads_back(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "x"
    monkeypatch.setattr(sys, "argv", ["npgmf-edge", "make-data", str(out), "--image-size", "64", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    dataset = load_dataset(out)
    assert dataset.format == "mvtec_loco" and summary["dataset"] == str(dataset.root)
    assert dataset.counts() == {
        "test/good": 20,
        "test/logical_anomalies": 20,
        "test/structural_anomalies": 20,
        "train/good": 60,
        "validation/good": 60,
    }
    regions = [r for s in dataset.test if s.label for r in read_defect_regions(s, dataset.defects_config)]
    assert len(regions) == 45  # 20 structural + 20 logical, 5 of which (swaps) have two masks
    assert Counter(r.spec.defect_name for r in regions) == Counter(summary["defects"])
