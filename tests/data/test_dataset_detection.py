"""Format detection, category selection and load_dataset's argument checks."""

import shutil
from pathlib import Path

import pytest

from npgmf_edge.data import detect_format, load_dataset
from npgmf_edge.errors import ConfigError, DatasetError


def test_each_layout_is_detected_from_its_folders(
    mvtec_ad_dir, btad_dir, folder_dir, loco_dataset_dir
) -> None:
    assert [detect_format(d) for d in (mvtec_ad_dir, btad_dir, folder_dir, loco_dataset_dir)] == [
        "mvtec_ad",
        "btad",
        "folder",
        "mvtec_loco",
    ]


def test_loco_is_told_from_mvtec_ad_by_defects_config_alone(mvtec_ad_dir) -> None:
    (mvtec_ad_dir / "defects_config.json").write_text("[]")
    assert detect_format(mvtec_ad_dir) == "mvtec_loco"


def test_folder_of_categories_is_detected_from_its_children(mvtec_ad_dir) -> None:
    assert detect_format(mvtec_ad_dir.parent) == "mvtec_ad"


def test_the_only_category_of_a_parent_folder_is_used(mvtec_ad_dir) -> None:
    dataset = load_dataset(mvtec_ad_dir.parent)
    assert (dataset.category, dataset.root) == ("bottle", mvtec_ad_dir)


def test_category_picks_one_of_several(mvtec_ad_dir) -> None:
    shutil.copytree(mvtec_ad_dir, mvtec_ad_dir.parent / "cable")
    assert load_dataset(mvtec_ad_dir.parent, category="cable").root == mvtec_ad_dir.parent / "cable"


def test_several_categories_without_a_choice_are_listed(mvtec_ad_dir) -> None:
    shutil.copytree(mvtec_ad_dir, mvtec_ad_dir.parent / "cable")
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir.parent)
    assert str(error.value) == (
        f"{mvtec_ad_dir.parent} holds 2 categories (bottle, cable); "
        "choose one with category= (CLI: --category)"
    )


def test_unknown_category_lists_the_available_ones(mvtec_ad_dir) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir.parent, category="screw")
    assert str(error.value) == f"category 'screw' not found in {mvtec_ad_dir.parent}; available: bottle"


def test_category_must_match_a_category_folder_given_directly(mvtec_ad_dir) -> None:
    assert load_dataset(mvtec_ad_dir, category="bottle").category == "bottle"
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir, category="screw")
    assert str(error.value) == f"{mvtec_ad_dir} is the dataset folder of category 'bottle', not 'screw'"


def test_mixed_formats_in_one_parent_are_refused(mvtec_ad_dir, btad_dir) -> None:
    assert mvtec_ad_dir.parent == btad_dir.parent
    with pytest.raises(DatasetError) as error:
        load_dataset(mvtec_ad_dir.parent)
    assert (
        str(error.value)
        == f"{mvtec_ad_dir.parent} mixes dataset formats (btad, mvtec_ad); point at one category folder"
    )


def test_undetectable_layout_explains_the_options(tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path)
    assert str(error.value) == (
        f"cannot detect the dataset format of {tmp_path}: expected train/good and test/ "
        "(MVTec AD; MVTec LOCO AD also has validation/ and defects_config.json), train/ok and test/ (BTAD), "
        "or a good/ folder; for other layouts pass format='folder' with normal_dir and abnormal_dirs "
        "(see docs/DATA.md)"
    )


def test_missing_root_is_named(tmp_path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "nowhere")
    assert str(error.value) == f"dataset folder {tmp_path / 'nowhere'} does not exist"


def test_explicit_format_on_the_wrong_layout_names_the_missing_folder(btad_dir) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(btad_dir, format="mvtec_ad")
    assert str(error.value) == (
        f"missing folder {btad_dir / 'train/good'}: an MVTec AD category needs train/good, "
        "test/<defect type>/ and ground_truth/<defect type>/"
    )


def test_unknown_format_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as error:
        load_dataset(tmp_path, format="kolektor")
    assert (
        str(error.value)
        == "unknown dataset format 'kolektor'; choose one of: auto, mvtec_ad, mvtec_loco, btad, folder"
    )


def test_unknown_folder_option_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as error:
        load_dataset(tmp_path, normal_folder="good")
    assert str(error.value) == (
        "unknown folder option(s) normal_folder; valid: normal_dir, abnormal_dirs, mask_dir, mask_extension, "
        "test_fraction, seed"
    )


def test_folder_options_with_another_format_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError) as error:
        load_dataset(tmp_path, format="btad", mask_dir="masks")
    assert str(error.value) == "folder options (mask_dir) apply to format 'folder', not 'btad'"


def test_root_may_be_a_string(mvtec_ad_dir: Path) -> None:
    assert load_dataset(str(mvtec_ad_dir)).category == "bottle"
