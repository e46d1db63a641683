"""Folder checks shared by the readers, so every format reports a broken layout in the same words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from npgmf_edge.data.dataset import GOOD, Sample
from npgmf_edge.data.image_io import IMAGE_EXTENSIONS, is_image_file
from npgmf_edge.errors import DatasetError


def require_dir(path: Path, needed_by: str) -> Path:
    """`path` if it is a folder, else a DatasetError naming it and the format that needs it."""
    if not path.is_dir():
        raise DatasetError(f"missing folder {path}: {needed_by}")
    return path


def no_images(folder: Path) -> DatasetError:
    return DatasetError(f"no images in {folder}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; an empty folder is a DatasetError naming it."""
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise no_images(folder)
    return images


def subfolders(folder: Path) -> list[Path]:
    """Visible subfolders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def good_samples(folder: Path, split: str) -> list[Sample]:
    """Every image of a folder of normal images as `good` samples of `split`."""
    return [Sample(path, split, GOOD) for path in list_images(folder)]


def defect_test_samples(
    category_dir: Path, layout: str, masks_of: Callable[[Path, Path], tuple[Path, ...]]
) -> list[Sample]:
    """The test samples of an MVTec AD or LOCO category, one folder per defect type under `test/`; all
    but `good` images get `masks_of(image, ground_truth/<defect type>)` (DatasetError when missing)."""
    test_dir = require_dir(category_dir / "test", layout)
    test: list[Sample] = []
    for type_dir in subfolders(test_dir):
        if type_dir.name == GOOD:
            test.extend(good_samples(type_dir, "test"))
            continue
        truth_dir = category_dir / "ground_truth" / type_dir.name
        test.extend(
            Sample(image, "test", type_dir.name, masks_of(image, truth_dir))
            for image in list_images(type_dir)
        )
    if not test:
        raise DatasetError(f"no defect-type folders in {test_dir}: {layout}")
    return test
