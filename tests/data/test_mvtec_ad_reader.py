"""MVTec AD reader: samples, masks and the errors for a broken layout."""

import shutil

import numpy as np
import pytest

from npgmf_edge.data import load_dataset
from npgmf_edge.errors import DatasetError


def test_mvtec_ad_category_lists_train_and_test_with_one_mask_each(mvtec_ad_dir) -> None:
    dataset = load_dataset(mvtec_ad_dir)
    assert (dataset.format, dataset.category, dataset.root) == ("mvtec_ad", "bottle", mvtec_ad_dir)
    assert dataset.counts() == {"test/broken_large": 2, "test/good": 2, "train/good": 3}
    assert dataset.validation == [] and dataset.defects_config == []
    assert [s.image_id for s in dataset.train] == ["000", "001", "002"]
    defective = [s for s in dataset.test if s.label == 1]
    assert [s.mask_paths for s in defective] == [
        (mvtec_ad_dir / "ground_truth/broken_large/000_mask.png",),
        (mvtec_ad_dir / "ground_truth/broken_large/001_mask.png",),
    ]
    assert all(s.mask_paths == () for s in dataset.test if s.label == 0)
    assert dataset.has_pixel_masks


def test_missing_mask_names_the_expected_file(mvtec_ad_dir) -> None:
    mask = mvtec_ad_dir / "ground_truth/broken_large/001_mask.png"
    mask.unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir)
    assert str(error.value) == (
        f"missing mask {mask} for test image {mvtec_ad_dir / 'test/broken_large/001.png'}: MVTec AD needs "
        "ground_truth/<defect type>/<id>_mask.png for every defective test image"
    )


def test_missing_test_folder_names_it_and_the_layout(mvtec_ad_dir) -> None:
    shutil.rmtree(mvtec_ad_dir / "test")
    (mvtec_ad_dir / "test").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir, format="mvtec_ad")
    assert str(error.value) == (
        f"no defect-type folders in {mvtec_ad_dir / 'test'}: an MVTec AD category needs train/good, "
        "test/<defect type>/ and ground_truth/<defect type>/"
    )


def test_missing_train_folder_is_named(mvtec_ad_dir) -> None:
    shutil.rmtree(mvtec_ad_dir / "train/good")
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir, format="mvtec_ad")
    assert str(error.value) == (
        f"missing folder {mvtec_ad_dir / 'train/good'}: an MVTec AD category needs train/good, "
        "test/<defect type>/ and ground_truth/<defect type>/"
    )


def test_empty_defect_folder_names_it(mvtec_ad_dir) -> None:
    (mvtec_ad_dir / "test/contamination").mkdir()
    (mvtec_ad_dir / "test/contamination/notes.txt").write_text("no images here")
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir)
    assert str(error.value) == (
        f"no images in {mvtec_ad_dir / 'test/contamination'}: expected files ending in "
        ".png, .jpg, .jpeg, .bmp, .tif, .tiff"
    )


def test_hidden_files_and_other_extensions_are_not_images(mvtec_ad_dir, writer) -> None:
    (mvtec_ad_dir / "train/good/.DS_Store").write_bytes(b"\0")
    (mvtec_ad_dir / "train/good/readme.txt").write_text("x")
    writer(mvtec_ad_dir / "train/good/003.PNG", np.zeros((2, 2), np.uint8))
    assert [s.image_path.name for s in load_dataset(mvtec_ad_dir).train] == [
        "000.png",
        "001.png",
        "002.png",
        "003.PNG",
    ]
