"""Format detection and the one entry point, `load_dataset`, over every reader.

Detection looks at folder names only (no image is decoded), first at `root`, then at its subfolders
(a folder of categories):
- `train/good` + `test/` + (`validation/` or `defects_config.json`) -> MVTec LOCO AD
- `train/good` + `test/`                                            -> MVTec AD
- `train/ok` + `test/`                                              -> BTAD
- `good/` directly in `root`                                        -> folder
Any other layout needs `format="folder"` (or folder options such as `normal_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from npgmf_edge.data.btad import read_btad
from npgmf_edge.data.dataset import AnomalyDataset
from npgmf_edge.data.folder import DEFAULT_NORMAL_DIR, FOLDER_OPTIONS, read_folder
from npgmf_edge.data.layout import subfolders
from npgmf_edge.data.mvtec_ad import read_mvtec_ad
from npgmf_edge.data.mvtec_loco import DEFECTS_CONFIG, read_mvtec_loco
from npgmf_edge.errors import ConfigError, DatasetError

CATEGORY_READERS: dict[str, Callable[[Path], AnomalyDataset]] = {
    "mvtec_ad": read_mvtec_ad,
    "mvtec_loco": read_mvtec_loco,
    "btad": read_btad,
}
FORMATS = ("auto", *CATEGORY_READERS, "folder")


def _category_format(folder: Path) -> str | None:
    """The structured format (MVTec AD, LOCO, BTAD) whose marker folders `folder` has, if any."""
    if not (folder / "test").is_dir():
        return None
    if (folder / "train" / "good").is_dir():
        is_loco = (folder / "validation").is_dir() or (folder / DEFECTS_CONFIG).is_file()
        return "mvtec_loco" if is_loco else "mvtec_ad"
    if (folder / "train" / "ok").is_dir():
        return "btad"
    if (folder / DEFECTS_CONFIG).is_file() and (folder / "ground_truth").is_dir():
        return "mvtec_loco"  # a test-only copy, as the official evaluation takes
    return None


def detect_format(root: Path) -> str:
    """The format of a category folder or a folder of categories: mvtec_ad, mvtec_loco, btad or folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    own_format = _category_format(root)
    if own_format is not None:
        return own_format
    if (root / DEFAULT_NORMAL_DIR).is_dir():
        return "folder"
    child_formats = sorted({f for f in map(_category_format, subfolders(root)) if f is not None})
    if len(child_formats) == 1:
        return child_formats[0]
    if child_formats:
        raise DatasetError(
            f"{root} mixes dataset formats ({', '.join(child_formats)}); point at one category folder"
        )
    raise DatasetError(
        f"cannot detect the dataset format of {root}: expected train/good and test/ (MVTec AD; MVTec LOCO AD "
        "also has validation/ and defects_config.json), train/ok and test/ (BTAD), or a good/ folder; for "
        "other layouts pass format='folder' with normal_dir and abnormal_dirs (see docs/DATA.md)"
    )


def load_dataset(
    root: Path, category: str | None = None, format: str = "auto", **folder_options: Any
) -> AnomalyDataset:
    """List the samples of one category of `root` (`category` picks it, or the only one), detecting the
    format unless `format` names it. A folder dataset is `root` itself, named by `category` (default: the
    folder's name), with `folder_options` those of `read_folder`."""
    root = Path(root)
    if format not in FORMATS:
        raise ConfigError(f"unknown dataset format {format!r}; choose one of: {', '.join(FORMATS)}")
    unknown = sorted(set(folder_options) - set(FOLDER_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown folder option(s) {', '.join(unknown)}; valid: {', '.join(FOLDER_OPTIONS)}"
        )
    if folder_options and format not in ("auto", "folder"):
        raise ConfigError(
            f"folder options ({', '.join(sorted(folder_options))}) apply to format 'folder', not {format!r}"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if format == "folder" or folder_options:
        return read_folder(root, category or root.name, **folder_options)
    chosen_format = detect_format(root) if format == "auto" else format
    if chosen_format == "folder":
        return read_folder(root, category or root.name)
    return CATEGORY_READERS[chosen_format](_category_dir(root, category, chosen_format))


def _category_dir(root: Path, category: str | None, dataset_format: str) -> Path:
    """The category folder: `root` itself, or the one subfolder of `dataset_format` that `category` names.

    A `root` with no category subfolders is taken as the category, so the reader names what is missing.
    """
    names = [folder.name for folder in subfolders(root) if _category_format(folder) == dataset_format]
    if _category_format(root) == dataset_format or not names:
        if category is not None and category != root.name:
            raise DatasetError(f"{root} is the dataset folder of category {root.name!r}, not {category!r}")
        return root
    if category is not None:
        if category not in names:
            raise DatasetError(f"category {category!r} not found in {root}; available: {', '.join(names)}")
        return root / category
    if len(names) > 1:
        raise DatasetError(
            f"{root} holds {len(names)} categories ({', '.join(names)}); "
            "choose one with category= (CLI: --category)"
        )
    return root / names[0]
