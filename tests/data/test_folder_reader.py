"""Generic folder reader: held-out good images, mask folder or masks beside images, and its errors."""

import shutil

import numpy as np
import pytest

from npgmf_edge.data import load_dataset
from npgmf_edge.errors import ConfigError, DatasetError


def test_folder_holds_out_a_seeded_fifth_of_good_images_for_test(folder_dir) -> None:
    dataset = load_dataset(folder_dir, mask_dir="masks")
    assert (dataset.format, dataset.category) == ("folder", "widgets")
    assert dataset.counts() == {"test/good": 2, "test/scratch": 2, "train/good": 8}
    assert dataset.validation == []
    again = load_dataset(folder_dir, mask_dir="masks")
    assert [s.image_path for s in again.test] == [s.image_path for s in dataset.test]
    other_seed = load_dataset(folder_dir, mask_dir="masks", seed=3)
    assert {s.image_path for s in other_seed.train} != {s.image_path for s in dataset.train}
    all_good = {s.image_path for s in dataset.train} | {s.image_path for s in dataset.test if s.label == 0}
    assert all_good == set((folder_dir / "good").iterdir())


def test_held_out_count_is_rounded_down(folder_dir) -> None:
    dataset = load_dataset(folder_dir, mask_dir="masks", test_fraction=0.25)  # 2.5 of 10
    assert dataset.counts()["test/good"] == 2
    assert "test/good" not in load_dataset(folder_dir, mask_dir="masks", test_fraction=0.0).counts()


def test_mask_folder_matches_stem_or_stem_mask(folder_dir) -> None:
    dataset = load_dataset(folder_dir, mask_dir="masks")
    assert [s.mask_paths for s in dataset.test if s.label == 1] == [
        (folder_dir / "masks/s0.png",),
        (folder_dir / "masks/s1_mask.png",),
    ]
    assert dataset.has_pixel_masks


def test_without_mask_folder_every_image_subfolder_is_abnormal(folder_dir) -> None:
    dataset = load_dataset(folder_dir)  # detected from good/; masks/ then reads as a defect folder
    assert dataset.counts() == {"test/good": 2, "test/masks": 2, "test/scratch": 2, "train/good": 8}
    assert not dataset.has_pixel_masks


def test_masks_beside_images_pair_by_stem_and_are_not_images(tmp_path, writer) -> None:
    root = tmp_path / "tiles"
    for i in range(5):
        writer(root / "free/Imgs" / f"f{i}.jpg", np.zeros((6, 6), np.uint8))
        writer(root / "free/Imgs" / f"f{i}.png", np.zeros((6, 6), np.uint8))
    writer(root / "crack/Imgs/c0.jpg", np.zeros((6, 6), np.uint8))
    writer(root / "crack/Imgs/c0.png", np.full((6, 6), 255, np.uint8))
    writer(root / "crack/Imgs/c1.png", np.zeros((6, 6), np.uint8))
    writer(root / "crack/Imgs/c1_mask.png", np.full((6, 6), 255, np.uint8))
    writer(root / "crack/Imgs/c2.bmp", np.zeros((6, 6), np.uint8))
    dataset = load_dataset(root, normal_dir="free/Imgs", abnormal_dirs=["crack/Imgs"])
    assert sorted(s.image_path.name for s in (*dataset.train, *dataset.test) if s.label == 0) == [
        f"f{i}.jpg" for i in range(5)
    ]
    abnormal = [s for s in dataset.test if s.label == 1]
    assert [(s.defect_type, s.image_path.name, [m.name for m in s.mask_paths]) for s in abnormal] == [
        ("crack/Imgs", "c0.jpg", ["c0.png"]),
        ("crack/Imgs", "c1.png", ["c1_mask.png"]),
        ("crack/Imgs", "c2.bmp", []),
    ]


def test_abnormal_folders_can_be_named_by_a_mapping(folder_dir) -> None:
    dataset = load_dataset(folder_dir, abnormal_dirs={"scratched": "scratch"}, mask_dir="masks")
    assert {s.defect_type for s in dataset.test if s.label} == {"scratched"}


def test_category_names_a_folder_dataset(folder_dir) -> None:
    assert load_dataset(folder_dir, category="line3", mask_dir="masks").category == "line3"


def test_missing_normal_folder_is_named(folder_dir) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, normal_dir="ok")
    assert str(error.value) == (
        f"normal folder {folder_dir / 'ok'} does not exist; set normal_dir to the folder of good images"
    )


def test_missing_abnormal_folder_is_named(folder_dir) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, abnormal_dirs=["dent"])
    assert str(error.value) == (
        f"abnormal folder {folder_dir / 'dent'} does not exist; abnormal_dirs are relative to {folder_dir}"
    )


def test_missing_mask_folder_is_named(folder_dir) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, mask_dir="gt")
    assert str(error.value) == (
        f"mask folder {folder_dir / 'gt'} does not exist; set mask_dir relative to {folder_dir}"
    )


def test_missing_mask_in_mask_folder_names_the_image_and_candidates(folder_dir) -> None:
    (folder_dir / "masks/s1_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, mask_dir="masks")
    assert str(error.value) == (
        f"missing mask for {folder_dir / 'scratch/s1.jpg'}: expected s1.png or s1_mask.png in "
        f"{folder_dir / 'masks'}"
    )


def test_two_images_with_one_stem_are_ambiguous(folder_dir, writer) -> None:
    writer(folder_dir / "scratch/s0.bmp", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, mask_dir="masks")
    assert str(error.value) == (
        f"{folder_dir / 'scratch/s0.bmp'} and {folder_dir / 'scratch/s0.jpg'} share the stem 's0'; "
        "keep one image per stem (a mask beside an image ends in .png)"
    )


def test_one_mask_folder_cannot_serve_two_images_with_one_stem(folder_dir) -> None:
    shutil.copytree(folder_dir / "scratch", folder_dir / "dent")
    with pytest.raises(DatasetError) as error:
        load_dataset(folder_dir, abnormal_dirs=["dent", "scratch"], mask_dir="masks")
    assert str(error.value) == (
        f"{folder_dir / 'dent/s0.jpg'} and {folder_dir / 'scratch/s0.jpg'} share the stem 's0', so their "
        f"masks in {folder_dir / 'masks'} cannot be told apart; rename one of them"
    )


def test_empty_normal_folder_is_named(tmp_path) -> None:
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path)
    assert str(error.value) == (
        f"no images in {tmp_path / 'good'}: expected files ending in .png, .jpg, .jpeg, .bmp, .tif, .tiff"
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_test_fraction_outside_zero_to_one_is_a_config_error(folder_dir, fraction: float) -> None:
    with pytest.raises(ConfigError) as error:
        load_dataset(folder_dir, test_fraction=fraction)
    assert str(error.value) == f"test_fraction must be in [0, 1), got {fraction}"


def test_mask_extension_must_be_an_image_extension(folder_dir) -> None:
    with pytest.raises(ConfigError) as error:
        load_dataset(folder_dir, mask_extension=".txt")
    assert str(error.value) == (
        "mask_extension '.txt' is not an image extension (.png, .jpg, .jpeg, .bmp, .tif, .tiff)"
    )
