"""Folder checks shared by the readers, so every format reports a broken layout in the same words."""

from __future__ import annotations

from pathlib import Path

from npgmf_edge.data.dataset import Sample
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
    return [Sample(path, split, "good") for path in list_images(folder)]
