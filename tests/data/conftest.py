"""Small hand-made datasets in each supported layout, written fresh for every test (tests may break them)."""

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

IMAGE_HW = (24, 32)


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Write `pixels` with OpenCV (BGR order for colour), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels), path
    return path


def grey(value: int = 128, hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    return np.full(hw, value, dtype=np.uint8)


def square_mask(hw: tuple[int, int] = IMAGE_HW, value: int = 255) -> np.ndarray:
    mask = np.zeros(hw, dtype=np.uint8)
    mask[4:10, 6:14] = value
    return mask


@pytest.fixture
def writer() -> Callable[[Path, np.ndarray], Path]:
    return write_image


@pytest.fixture
def mvtec_ad_dir(tmp_path: Path) -> Path:
    """Category "bottle": 3 train/good, 2 test/good, 2 test/broken_large with `<id>_mask.png`."""
    category = tmp_path / "bottle"
    for i in range(3):
        write_image(category / "train/good" / f"{i:03d}.png", grey(100 + i))
    for i in range(2):
        write_image(category / "test/good" / f"{i:03d}.png", grey(90))
        write_image(category / "test/broken_large" / f"{i:03d}.png", grey(200))
        write_image(category / "ground_truth/broken_large" / f"{i:03d}_mask.png", square_mask())
    return category


@pytest.fixture
def btad_dir(tmp_path: Path) -> Path:
    """Category "01": 2 train/ok, 1 test/ok, 2 test/ko (one mask .png, one .bmp)."""
    category = tmp_path / "01"
    for i in range(2):
        write_image(category / "train/ok" / f"{i:04d}.bmp", grey(80))
    write_image(category / "test/ok" / "0000.bmp", grey(80))
    write_image(category / "test/ko" / "0000.bmp", grey(160))
    write_image(category / "test/ko" / "0001.bmp", grey(160))
    write_image(category / "ground_truth/ko" / "0000.png", square_mask())
    write_image(category / "ground_truth/ko" / "0001.bmp", square_mask())
    return category


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    """10 good/ images, 2 scratch/ images with masks in masks/ (one `<id>.png`, one `<id>_mask.png`)."""
    root = tmp_path / "widgets"
    for i in range(10):
        write_image(root / "good" / f"g{i}.jpg", grey(120))
    write_image(root / "scratch" / "s0.jpg", grey(30))
    write_image(root / "scratch" / "s1.jpg", grey(30))
    write_image(root / "masks" / "s0.png", square_mask())
    write_image(root / "masks" / "s1_mask.png", square_mask())
    return root
