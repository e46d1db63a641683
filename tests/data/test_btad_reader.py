"""BTAD reader: ok/ko folders, masks in .png or .bmp, and the errors for a broken layout."""

import pytest

from npgmf_edge.data import load_dataset, read_sample_masks
from npgmf_edge.errors import DatasetError


def test_btad_maps_ok_to_good_and_finds_png_or_bmp_masks(btad_dir) -> None:
    dataset = load_dataset(btad_dir)
    assert (dataset.format, dataset.category) == ("btad", "01")
    assert dataset.counts() == {"test/good": 1, "test/ko": 2, "train/good": 2}
    defective = [s for s in dataset.test if s.label == 1]
    assert [s.mask_paths for s in defective] == [
        (btad_dir / "ground_truth/ko/0000.png",),
        (btad_dir / "ground_truth/ko/0001.bmp",),
    ]
    assert [int(m.max()) for s in defective for m in read_sample_masks(s)] == [255, 255]


def test_missing_btad_mask_names_the_image(btad_dir) -> None:
    (btad_dir / "ground_truth/ko/0001.bmp").unlink()
    with pytest.raises(DatasetError) as error:
        load_dataset(btad_dir)
    assert str(error.value) == (
        f"missing mask for test image {btad_dir / 'test/ko/0001.bmp'}: "
        "BTAD needs ground_truth/ko/0001.png or .bmp"
    )


def test_missing_ko_folder_is_named(btad_dir) -> None:
    for path in (btad_dir / "test/ko").iterdir():
        path.unlink()
    (btad_dir / "test/ko").rmdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(btad_dir)
    assert str(error.value) == (
        f"missing folder {btad_dir / 'test/ko'}: a BTAD category needs train/ok, test/ok, test/ko "
        "and ground_truth/ko/"
    )
