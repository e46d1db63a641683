"""Generic folder reader: a folder of good images, folders of abnormal images, masks optional.

A flat folder has no train/test split, so a seeded fraction of the good images (default 0.2, rounded
down) is held out as `test/good`; the rest is `train`. There is no validation split: training holds
out its own (TrainConfig.validation_fraction).

Masks live either in `mask_dir` or beside the images. The mask of image `<stem>.<ext>` is
`<stem><mask_extension>` or `<stem>_mask<mask_extension>` (default extension ".png"); beside the images,
a file counts as a mask only when it pairs with an image of the same stem, e.g. the magnetic-tile
layout `Imgs/<id>.jpg` + `Imgs/<id>.png`. Masks found beside good images are ignored.

Example:
    >>> load_dataset(Path("magnetic_tile"), normal_dir="MT_Free/Imgs",
    ...              abnormal_dirs={"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"})
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from npgmf_edge.data.dataset import GOOD, AnomalyDataset, Sample
from npgmf_edge.data.image_io import IMAGE_EXTENSIONS, is_image_file
from npgmf_edge.data.layout import no_images, subfolders
from npgmf_edge.errors import ConfigError, DatasetError

FOLDER_OPTIONS = ("normal_dir", "abnormal_dirs", "mask_dir", "mask_extension", "test_fraction", "seed")
DEFAULT_NORMAL_DIR = "good"
DEFAULT_TEST_FRACTION = 0.2
MASK_SUFFIX = "_mask"


def read_folder(
    root: Path,
    category: str,
    *,
    normal_dir: str | Path = DEFAULT_NORMAL_DIR,
    abnormal_dirs: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
    mask_dir: str | Path | None = None,
    mask_extension: str = ".png",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> AnomalyDataset:
    """List a folder dataset; folders are relative to `root`. `abnormal_dirs`: a list (defect type = its
    path) or a mapping from defect type to folder; default: every subfolder of `root` holding images but
    the normal and mask folders and those containing them."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    mask_extension = mask_extension.lower()
    if mask_extension not in IMAGE_EXTENSIONS:
        raise ConfigError(
            f"mask_extension {mask_extension!r} is not an image extension ({', '.join(IMAGE_EXTENSIONS)})"
        )
    normal_folder = root / normal_dir
    if not normal_folder.is_dir():
        raise DatasetError(
            f"normal folder {normal_folder} does not exist; set normal_dir to the folder of good images"
        )
    mask_folder = root / mask_dir if mask_dir is not None else None
    if mask_folder is not None and not mask_folder.is_dir():
        raise DatasetError(f"mask folder {mask_folder} does not exist; set mask_dir relative to {root}")

    good_images = list(_images_and_masks(normal_folder, mask_extension))
    held_out = _held_out(len(good_images), test_fraction, seed)
    train = [Sample(image, "train", GOOD) for i, image in enumerate(good_images) if i not in held_out]
    test = [Sample(image, "test", GOOD) for i, image in enumerate(good_images) if i in held_out]
    excluded = [normal_folder, *([mask_folder] if mask_folder is not None else [])]
    for defect_type, folder in _abnormal_folders(root, abnormal_dirs, excluded).items():
        for image, beside_mask in _images_and_masks(folder, mask_extension).items():
            mask = _mask_in(mask_folder, image, mask_extension) if mask_folder is not None else beside_mask
            test.append(Sample(image, "test", defect_type, (mask,) if mask is not None else ()))
    if mask_folder is not None:
        _check_unique_stems([s.image_path for s in test if s.label == 1], mask_folder)
    return AnomalyDataset(root, "folder", category, train, [], test, [])


def _held_out(count: int, fraction: float, seed: int) -> set[int]:
    """Indices of the good images moved to test: floor(fraction * count), always fewer than count."""
    order = np.random.default_rng(seed).permutation(count)
    return {int(i) for i in order[: math.floor(fraction * count)]}


def _abnormal_folders(
    root: Path, abnormal_dirs: Sequence[str | Path] | Mapping[str, str | Path] | None, excluded: list[Path]
) -> dict[str, Path]:
    """Defect type -> folder, each checked to exist."""
    if abnormal_dirs is None:
        named = {
            folder.name: folder
            for folder in subfolders(root)
            if not any(folder == e or folder in e.parents for e in excluded)
            and any(is_image_file(p) for p in folder.iterdir())
        }
    elif isinstance(abnormal_dirs, Mapping):
        named = {str(name): root / folder for name, folder in abnormal_dirs.items()}
    else:
        named = {Path(folder).as_posix(): root / folder for folder in abnormal_dirs}
    for folder in named.values():
        if not folder.is_dir():
            raise DatasetError(
                f"abnormal folder {folder} does not exist; abnormal_dirs are relative to {root}"
            )
    return named


def _images_and_masks(folder: Path, mask_extension: str) -> dict[Path, Path | None]:
    """Image -> the mask beside it (or None), in name order; masks are not listed as images."""
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        by_stem[path.stem].append(path)

    def is_mask(path: Path) -> bool:
        if path.suffix.lower() != mask_extension:
            return False
        pairs_with_mask_suffix = path.stem.endswith(MASK_SUFFIX) and path.stem[: -len(MASK_SUFFIX)] in by_stem
        return pairs_with_mask_suffix or len(by_stem[path.stem]) > 1

    images = [p for p in files if not is_mask(p)]
    if not images:
        raise no_images(folder)
    masks = {p.stem: p for p in files if is_mask(p)}
    result: dict[Path, Path | None] = {}
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise DatasetError(
                f"{seen[image.stem]} and {image} share the stem {image.stem!r}; keep one image per stem "
                f"(a mask beside an image ends in {mask_extension})"
            )
        seen[image.stem] = image
        result[image] = masks.get(image.stem, masks.get(f"{image.stem}{MASK_SUFFIX}"))
    return result


def _mask_in(mask_folder: Path, image: Path, mask_extension: str) -> Path:
    """The mask of `image` in `mask_folder`; with a mask folder, every abnormal image needs one."""
    candidates = [mask_folder / f"{image.stem}{suffix}{mask_extension}" for suffix in ("", MASK_SUFFIX)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"missing mask for {image}: expected {candidates[0].name} or {candidates[1].name} in {mask_folder}"
    )


def _check_unique_stems(images: list[Path], mask_folder: Path) -> None:
    """One mask folder names masks by stem, so two abnormal images with one stem would share a mask."""
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise DatasetError(
                f"{seen[image.stem]} and {image} share the stem {image.stem!r}, so their masks in "
                f"{mask_folder} cannot be told apart; rename one of them"
            )
        seen[image.stem] = image
