"""Score maps as TIFFs in the official MVTec LOCO AD layout: round trip and error messages."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from npgmf_edge.data import load_dataset
from npgmf_edge.errors import DatasetError
from npgmf_edge.evaluation import map_path, read_maps, write_maps_tiff


@pytest.fixture(scope="module")
def dataset(loco_dataset_dir):
    return load_dataset(loco_dataset_dir)  # the shared 64 px set; maps are written under tmp_path, not in it


def write_random_maps(dataset, maps_dir: Path) -> dict:
    rng = np.random.default_rng(0)
    written = {}
    for sample in dataset.test:
        amap = rng.random((64, 64), dtype=np.float32)
        write_maps_tiff(maps_dir, dataset.category, sample, amap)
        written[sample.image_path] = amap
    return written


def test_maps_round_trip_in_the_official_layout(dataset, tmp_path) -> None:
    written = write_random_maps(dataset, tmp_path)
    sample = dataset.test[-1]
    expected = tmp_path / dataset.category / "test" / sample.defect_type / f"{sample.image_id}.tiff"
    assert map_path(tmp_path, dataset.category, sample) == expected and expected.is_file()
    maps = read_maps(tmp_path, dataset)
    assert maps.keys() == written.keys()
    for path, amap in written.items():
        assert maps[path].dtype == np.float32 and np.array_equal(maps[path], amap)


def test_read_maps_accepts_tif_files(dataset, tmp_path) -> None:
    write_random_maps(dataset, tmp_path)
    tiff = map_path(tmp_path, dataset.category, dataset.test[0])
    tiff.rename(tiff.with_suffix(".tif"))
    assert len(read_maps(tmp_path, dataset)) == len(dataset.test)


def test_missing_map_error_names_the_file_and_the_layout(dataset, tmp_path) -> None:
    write_random_maps(dataset, tmp_path)
    sample = dataset.test[1]
    path = map_path(tmp_path, dataset.category, sample)
    path.unlink()
    message = (
        f"missing score map {path} for test image {sample.image_path} (1 of {len(dataset.test)} maps "
        "missing); write one map per test image as <maps>/<category>/test/<defect type>/<image id>.tiff"
    )
    with pytest.raises(DatasetError) as info:
        read_maps(tmp_path, dataset)
    assert str(info.value) == message


def test_map_of_the_wrong_size_is_reported_with_both_sizes(dataset, tmp_path) -> None:
    write_random_maps(dataset, tmp_path)
    sample = dataset.test[0]
    path = map_path(tmp_path, dataset.category, sample)
    tifffile.imwrite(path, np.zeros((32, 48), dtype=np.float32))
    message = (
        f"score map {path} is 32x48 (height x width) but its image {sample.image_path} is 64x64; "
        "write maps at the original image resolution"
    )
    with pytest.raises(DatasetError) as info:
        read_maps(tmp_path, dataset)
    assert str(info.value) == message


def test_map_with_nan_is_rejected(dataset, tmp_path) -> None:
    write_random_maps(dataset, tmp_path)
    path = map_path(tmp_path, dataset.category, dataset.test[0])
    tifffile.imwrite(path, np.full((64, 64), np.nan, dtype=np.float32))
    with pytest.raises(DatasetError, match="contains NaN"):
        read_maps(tmp_path, dataset)
