"""Score maps on disk in the layout the official MVTec LOCO AD evaluation reads.

`<maps>/<category>/test/<defect type>/<image id>.tiff`: one 2-D float32 TIFF per test image, at the
image's original resolution. Maps written by any tool in this layout can be scored with
`npgmf-edge evaluate --maps`, and maps we write can be fed to the official script unchanged.

Example:
    >>> write_maps_tiff(Path("maps"), "breakfast_box", sample, anomaly_map)
    >>> maps = read_maps(Path("maps"), dataset)      # {sample.image_path: (H, W) float32}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from npgmf_edge.data import AnomalyDataset, Sample
from npgmf_edge.data.image_io import image_size
from npgmf_edge.errors import DatasetError

TIFF_SUFFIX = ".tiff"
READ_SUFFIXES = (".tiff", ".tif", ".TIFF", ".TIF")  # the extensions the official script accepts
MAPS_LAYOUT = "<maps>/<category>/test/<defect type>/<image id>.tiff"


def map_path(maps_dir: Path, category: str, sample: Sample, suffix: str = TIFF_SUFFIX) -> Path:
    """Where the score map of a test `sample` lives."""
    return Path(maps_dir) / category / "test" / sample.defect_type / f"{sample.image_id}{suffix}"


def write_maps_tiff(maps_dir: Path, category: str, sample: Sample, anomaly_map: np.ndarray) -> Path:
    """Write one map as a 2-D float32 TIFF (at the image's original resolution) and return its path."""
    array = np.asarray(anomaly_map, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"anomaly map for {sample.image_path} has shape {array.shape}; expected (H, W)")
    path = map_path(maps_dir, category, sample)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def read_map_tiff(path: Path) -> np.ndarray:
    """A score map from a TIFF file as (H, W) float32; an unreadable or non-2-D file is a DatasetError."""
    try:
        array = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise DatasetError(f"cannot read score map {path}: {exc}") from exc
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise DatasetError(f"score map {path} has shape {array.shape}; write one 2-D (H, W) map per image")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DatasetError(f"score map {path} has pixel type {array.dtype}; write real-valued (float32) maps")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DatasetError(f"score map {path} contains NaN or infinite scores")
    return array


def _find_map(maps_dir: Path, category: str, sample: Sample) -> Path | None:
    found = [p for p in (map_path(maps_dir, category, sample, s) for s in READ_SUFFIXES) if p.is_file()]
    if len(found) > 1 and len({p.resolve() for p in found}) > 1:  # case-insensitive file systems: one file
        names = ", ".join(p.name for p in found)
        raise DatasetError(f"several score maps for test image {sample.image_path}: {names}; keep one")
    return found[0] if found else None


def read_maps(maps_dir: Path, dataset: AnomalyDataset, check_sizes: bool = True) -> dict[Path, np.ndarray]:
    """The score map of every test image of `dataset`, keyed by `sample.image_path`; DatasetError naming
    the first missing map (and how many), or one whose size differs from its image's (`check_sizes`)."""
    maps_dir = Path(maps_dir)
    maps: dict[Path, np.ndarray] = {}
    missing: list[tuple[Sample, Path]] = []
    for sample in dataset.test:
        path = _find_map(maps_dir, dataset.category, sample)
        if path is None:
            missing.append((sample, map_path(maps_dir, dataset.category, sample)))
            continue
        amap = read_map_tiff(path)
        if check_sizes:
            height, width = image_size(sample.image_path)
            if amap.shape != (height, width):
                raise DatasetError(
                    f"score map {path} is {amap.shape[0]}x{amap.shape[1]} (height x width) but its image "
                    f"{sample.image_path} is {height}x{width}; write maps at the original image resolution"
                )
        maps[sample.image_path] = amap
    if missing:
        sample, path = missing[0]
        raise DatasetError(
            f"missing score map {path} for test image {sample.image_path} ({len(missing)} of "
            f"{len(dataset.test)} maps missing); write one map per test image as {MAPS_LAYOUT}"
        )
    return maps
