"""MVTec LOCO AD reader: splits, multi-defect masks, defects_config.json, and every error case."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from npgmf_edge.data import DefectSpec, load_dataset, read_defect_regions
from npgmf_edge.data.mvtec_loco import read_defects_config
from npgmf_edge.errors import DatasetError

KEYS = "defect_name, pixel_value, saturation_threshold, relative_saturation"


@pytest.fixture
def loco_copy(loco_dataset_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared generated dataset, for tests that break it."""
    return Path(shutil.copytree(loco_dataset_dir, tmp_path / loco_dataset_dir.name))


def test_loco_reader_lists_all_three_splits(loco_dataset_dir) -> None:
    dataset = load_dataset(loco_dataset_dir)
    assert (dataset.format, dataset.category) == ("mvtec_loco", "breakfast_tray")
    assert dataset.counts() == {
        "test/good": 4,
        "test/logical_anomalies": 4,
        "test/structural_anomalies": 3,
        "train/good": 10,
        "validation/good": 4,
    }
    assert {s.split for s in dataset.validation} == {"validation"}
    assert dataset.has_pixel_masks


def test_loco_samples_carry_every_mask_of_their_ground_truth_folder(loco_dataset_dir) -> None:
    dataset = load_dataset(loco_dataset_dir)
    logical = [s for s in dataset.test if s.defect_type == "logical_anomalies"]
    # Generated logical anomalies cycle missing, extra, swapped (one mask per compartment), misplaced.
    assert [len(s.mask_paths) for s in logical] == [1, 1, 2, 1]
    swapped = logical[2]
    assert swapped.mask_paths == (
        loco_dataset_dir / "ground_truth/logical_anomalies/002/000.png",
        loco_dataset_dir / "ground_truth/logical_anomalies/002/001.png",
    )
    names = [r.spec.defect_name for r in read_defect_regions(swapped, dataset.defects_config)]
    assert names == ["swapped_colours", "swapped_colours"]


def test_defects_config_is_parsed_into_specs(loco_dataset_dir) -> None:
    specs = load_dataset(loco_dataset_dir).defects_config
    assert specs[0] == DefectSpec("missing_disc", 255, 39.0, False)  # round(pi * (0.055 * 64) ** 2)
    assert specs[3] == DefectSpec("extra_part", 252, 1.0, True)


def test_missing_ground_truth_folder_names_the_image_and_folder(loco_copy) -> None:
    masks_dir = loco_copy / "ground_truth/structural_anomalies/001"
    shutil.rmtree(masks_dir)
    with pytest.raises(DatasetError) as error:
        load_dataset(loco_copy)
    assert str(error.value) == (
        f"missing ground truth for test image {loco_copy / 'test/structural_anomalies/001.png'}: "
        f"expected one PNG per defect in {masks_dir}/ (000.png, 001.png, ...)"
    )


def test_missing_defects_config_is_named(loco_copy) -> None:
    (loco_copy / "defects_config.json").unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(loco_copy)
    assert str(error.value) == (
        f"missing {loco_copy / 'defects_config.json'}: an MVTec LOCO AD category needs train/good, "
        "validation/good, test/<defect type>/, ground_truth/<defect type>/<id>/ and defects_config.json"
    )


def test_missing_validation_folder_is_named(loco_copy) -> None:
    shutil.rmtree(loco_copy / "validation")
    with pytest.raises(DatasetError) as error:
        load_dataset(loco_copy)
    assert str(error.value).startswith(f"missing folder {loco_copy / 'validation/good'}: an MVTec LOCO AD")


def test_mask_value_not_in_defects_config_is_reported_when_read(loco_copy) -> None:
    config_path = loco_copy / "defects_config.json"
    entries = [e for e in json.loads(config_path.read_text()) if e["defect_name"] != "scratch"]
    config_path.write_text(json.dumps(entries))
    dataset = load_dataset(loco_copy)
    scratched = next(s for s in dataset.test if s.defect_type == "structural_anomalies")
    with pytest.raises(DatasetError) as error:
        read_defect_regions(scratched, dataset.defects_config)
    assert str(error.value) == (
        f"mask {scratched.mask_paths[0]} has pixel value 249, which defects_config.json does not define "
        "(defined: 247, 248, 250, 251, 252, 253, 254, 255)"
    )


def _entry(**changes) -> dict:
    entry = {"defect_name": "a", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True}
    return entry | changes


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "{not json",
            "cannot parse {path}: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        ("[]", "{path} must hold a non-empty JSON list of objects with keys " + KEYS),
        ('{"defect_name": "a"}', "{path} must hold a non-empty JSON list of objects with keys " + KEYS),
        (
            json.dumps([{"defect_name": "a", "pixel_value": 3}]),
            "{path}: entry 0 lacks saturation_threshold, relative_saturation; each entry needs " + KEYS,
        ),
        (json.dumps([_entry(defect_name="")]), "{path}: entry 0 has defect_name ''; use a non-empty string"),
        (
            json.dumps([_entry(), _entry(defect_name="b", pixel_value=0)]),
            "{path}: entry 1 ('b') has pixel_value 0; use an integer from 1 to 255",
        ),
        (
            json.dumps([_entry(pixel_value=True)]),
            "{path}: entry 0 ('a') has pixel_value True; use an integer from 1 to 255",
        ),
        (
            json.dumps([_entry(relative_saturation="yes")]),
            "{path}: entry 0 ('a') has relative_saturation 'yes'; use true or false",
        ),
        (
            json.dumps([_entry(saturation_threshold=1.5)]),
            "{path}: entry 0 ('a') has saturation_threshold 1.5; use a fraction in (0, 1] when "
            "relative_saturation is true, else a pixel count above 0",
        ),
        (
            json.dumps([_entry(saturation_threshold=0, relative_saturation=False)]),
            "{path}: entry 0 ('a') has saturation_threshold 0; use a fraction in (0, 1] when "
            "relative_saturation is true, else a pixel count above 0",
        ),
        (
            json.dumps([_entry(), _entry(defect_name="b")]),
            "{path}: pixel_value 255 is used by both 'a' and 'b'; each defect type needs its own value",
        ),
    ],
)
def test_broken_defects_config_is_refused_with_the_reason(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "defects_config.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as error:
        read_defects_config(path)
    assert str(error.value) == message.format(path=path)


def test_absolute_threshold_in_pixels_is_accepted_above_one(tmp_path) -> None:
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps([_entry(saturation_threshold=2000, relative_saturation=False)]))
    assert read_defects_config(path) == [DefectSpec("a", 255, 2000.0, False)]


def test_loco_masks_of_another_size_are_refused_when_read(loco_copy, writer) -> None:
    dataset = load_dataset(loco_copy)
    sample = next(s for s in dataset.test if s.label == 1)
    writer(sample.mask_paths[0], np.full((32, 64), 255, dtype=np.uint8))
    with pytest.raises(DatasetError) as error:
        read_defect_regions(sample, dataset.defects_config)
    assert str(error.value) == (
        f"mask {sample.mask_paths[0]} is 32x64 (height x width) but its image {sample.image_path} is 64x64; "
        "a mask must have the size of its image"
    )
