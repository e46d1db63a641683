"""evaluate_maps: official keys and subsets, wiring of masks and saturation areas, and error messages."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from npgmf_edge.data import load_dataset, read_ground_truth
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset
from npgmf_edge.errors import DatasetError
from npgmf_edge.evaluation import evaluate_maps, format_results_table
from npgmf_edge.metrics import image_auroc, pixel_auroc

LIMIT_KEYS = ["0.01", "0.05", "0.1", "0.3", "1.0"]


@pytest.fixture(scope="module")
def loco(tmp_path_factory):
    root = tmp_path_factory.mktemp("loco")
    counts = dict(n_test_good=3, n_logical=3, n_structural=3)
    cfg = SyntheticConfig(image_size=64, n_train=1, n_validation=1, **counts)
    generate_dataset(root, cfg, overwrite=True)
    return load_dataset(root)


def test_perfect_maps_score_one_everywhere_with_the_official_keys(loco) -> None:
    maps = {s.image_path: read_ground_truth(s, loco.defects_config).astype(np.float32) for s in loco.test}
    results = evaluate_maps(loco, maps)
    subsets = ["logical_anomalies", "structural_anomalies", "mean"]
    assert results["subsets"] == subsets
    assert results["classification"]["auc_roc"] == {name: 1.0 for name in subsets}
    localization = results["localization"]
    assert localization["auc_roc"] == pytest.approx({name: 1.0 for name in subsets})
    for name in subsets:
        assert list(localization["auc_spro"][name]) == LIMIT_KEYS
        assert localization["auc_spro"][name] == pytest.approx(dict.fromkeys(LIMIT_KEYS, 1.0))
        assert localization["auc_pro"][name] == pytest.approx({"0.3": 1.0})
    assert json.loads(json.dumps(results)) == results  # JSON-ready as it is


def test_each_loco_subset_is_scored_with_all_good_images(loco) -> None:
    rng = np.random.default_rng(1)
    maps = {s.image_path: rng.random((64, 64)).astype(np.float32) for s in loco.test}
    results = evaluate_maps(loco, maps)
    good = [s for s in loco.test if s.label == 0]
    for name in ("logical_anomalies", "structural_anomalies"):
        members = good + [s for s in loco.test if s.defect_type == name]
        labels = [s.label for s in members]
        expected = image_auroc(labels, [maps[s.image_path].max() for s in members])
        assert results["classification"]["auc_roc"][name] == pytest.approx(expected)
        masks = [read_ground_truth(s, loco.defects_config) if s.label else None for s in members]
        pixel = pixel_auroc([maps[s.image_path] for s in members], masks)
        assert results["localization"]["auc_roc"][name] == pytest.approx(pixel)
    spro = results["localization"]["auc_spro"]
    assert spro["mean"]["0.05"] == pytest.approx(
        0.5 * (spro["logical_anomalies"]["0.05"] + spro["structural_anomalies"]["0.05"])
    )
    assert results["counts"] == {"good": 3, "logical_anomalies": 3, "structural_anomalies": 3}
    assert len(results["per_image"]) == len(loco.test)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


def hand_made_loco(root: Path) -> Path:
    """2x5-pixel images; a 5-px logical defect at relative 0.5 and a 2-px structural one at absolute 100."""
    category = root / "tray"
    image = np.zeros((2, 5, 3), dtype=np.uint8)
    for folder in ("train/good", "validation/good", "test/good", "test/logical_anomalies"):
        write_png(category / folder / "000.png", image)
    write_png(category / "test/structural_anomalies/000.png", image)
    logical = np.zeros((2, 5), dtype=np.uint8)
    logical[0] = 10
    structural = np.zeros((2, 5), dtype=np.uint8)
    structural[0, :2] = 20
    write_png(category / "ground_truth/logical_anomalies/000/000.png", logical)
    write_png(category / "ground_truth/structural_anomalies/000/000.png", structural)
    config = [
        {"defect_name": "half", "pixel_value": 10, "saturation_threshold": 0.5, "relative_saturation": True},
        {"defect_name": "big", "pixel_value": 20, "saturation_threshold": 100, "relative_saturation": False},
    ]
    (category / "defects_config.json").write_text(json.dumps(config))
    return category


def test_saturation_areas_round_down_and_cap_as_the_official_script(tmp_path) -> None:
    dataset = load_dataset(hand_made_loco(tmp_path))
    maps = {}
    for sample in dataset.test:
        amap = np.zeros((2, 5), dtype=np.float32)
        if sample.defect_type == "logical_anomalies":
            amap[:] = [[0.9, 0.5, 0.3, 0.2, 0.1], [0.6, 0.4, 0.0, 0.0, 0.0]]
        elif sample.defect_type == "structural_anomalies":
            amap[0, :2] = [0.8, 0.7]
        maps[sample.image_path] = amap
    results = evaluate_maps(dataset, maps)
    spro = results["localization"]["auc_spro"]
    # Logical: floor(0.5 * 5) = 2 px (0.9 and 0.5) saturate it; 15 defect-free pixels (5 + 10 of the good
    # image). Curve (0,0) -> (0,.5) -> (1/15,.5) -> (1/15,1) -> (1,1).
    assert spro["logical_anomalies"]["0.05"] == pytest.approx(0.5)
    assert spro["logical_anomalies"]["1.0"] == pytest.approx(14.5 / 15)
    # Structural: 100 px capped at the defect's 2 px, both above every defect-free pixel.
    assert spro["structural_anomalies"] == pytest.approx(dict.fromkeys(LIMIT_KEYS, 1.0))
    assert spro["mean"]["0.05"] == pytest.approx(0.75)
    # Pixel AUROC, logical: the defect's scores beat 15, 14, 13, 13 and 13 of the 15 defect-free pixels.
    assert results["localization"]["auc_roc"]["logical_anomalies"] == pytest.approx(68 / 75)


def hand_made_mvtec_ad(root: Path) -> Path:
    category = root / "bottle"
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    write_png(category / "train/good/000.png", image)
    write_png(category / "test/good/000.png", image)
    write_png(category / "test/crack/000.png", image)
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 255
    write_png(category / "ground_truth/crack/000_mask.png", mask)
    return category


def test_other_formats_report_one_subset_and_no_spro(tmp_path) -> None:
    dataset = load_dataset(hand_made_mvtec_ad(tmp_path))
    maps = {s.image_path: read_ground_truth(s).astype(np.float32) for s in dataset.test}
    results = evaluate_maps(dataset, maps)
    assert results["subsets"] == ["all"]
    assert results["classification"]["auc_roc"] == {"all": 1.0}
    assert set(results["localization"]) == {"auc_roc", "auc_pro"}
    assert results["localization"]["auc_pro"]["all"] == pytest.approx({"0.3": 1.0})


def test_evaluate_maps_names_a_missing_map_and_a_missing_class(loco, tmp_path) -> None:
    maps = {s.image_path: np.zeros((64, 64), np.float32) for s in loco.test[1:]}
    with pytest.raises(DatasetError, match=f"no score map for test image {loco.test[0].image_path}"):
        evaluate_maps(loco, maps)
    dataset = load_dataset(hand_made_loco(tmp_path))
    dataset.test = [s for s in dataset.test if s.label == 1]
    with pytest.raises(DatasetError, match="has no good images"):
        evaluate_maps(dataset, {s.image_path: np.zeros((2, 5)) for s in dataset.test})


def test_map_size_must_match_the_ground_truth(tmp_path) -> None:
    dataset = load_dataset(hand_made_loco(tmp_path))
    maps = {s.image_path: np.zeros((5, 2), np.float32) for s in dataset.test}
    with pytest.raises(DatasetError, match=r"is 5x2 \(height x width\) but its ground truth .* is 2x5"):
        evaluate_maps(dataset, maps)


def test_results_table_has_a_row_per_branch_and_subset(tmp_path) -> None:
    dataset = load_dataset(hand_made_mvtec_ad(tmp_path))
    perfect = evaluate_maps(dataset, {s.image_path: read_ground_truth(s).astype(float) for s in dataset.test})
    no_masks = {"subsets": ["all"], "classification": {"auc_roc": {"all": 0.5}}, "localization": {}}
    expected = "\n".join(
        [
            "branch      subset  image AUROC  pixel AUROC  AUPRO@0.3  sPRO@0.05",
            "structural  all           1.000        1.000      1.000          -",
            "logical     all           0.500            -          -          -",
        ]
    )
    assert format_results_table({"structural": perfect, "logical": no_masks}) == expected


def test_maps_are_scored_against_a_test_only_copy_of_the_dataset(
    loco_dataset_dir: Path, tmp_path: Path
) -> None:
    """The official evaluation takes a folder with test/, ground_truth/ and defects_config.json only."""
    import shutil

    full = load_dataset(loco_dataset_dir)
    copy = tmp_path / full.category
    for name in ("test", "ground_truth", "defects_config.json"):
        source = loco_dataset_dir / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy / name)
    test_only = load_dataset(copy)
    assert (test_only.format, test_only.train, test_only.validation) == ("mvtec_loco", [], [])
    assert [s.image_path.relative_to(copy) for s in test_only.test] == [
        s.image_path.relative_to(loco_dataset_dir) for s in full.test
    ]
