"""`npgmf-edge make-data`: a small, seeded MVTec LOCO AD-format dataset of trays with rule-bound parts.

Writes `out/<category>/{train/good, validation/good, test/{good, logical_anomalies, structural_anomalies},
ground_truth/<type>/<id>/000.png.., defects_config.json}` plus `out/make_data.json` (the configuration and
counts; it also marks `out` as ours, so `overwrite` never deletes a folder it did not write). The scenes
and their rules are described in `tray_scene` and docs/DATA.md.

Each image draws from its own generator seeded by (seed, split, index): the same seed gives the same bytes,
and changing one split's count leaves the other splits' images unchanged.

Example:
    >>> summary = generate_dataset(Path("/tmp/trays"), SyntheticConfig(image_size=128), overwrite=True)
    >>> load_dataset(Path("/tmp/trays")).counts()["test/logical_anomalies"]
    20
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from npgmf_edge.data import tray_scene
from npgmf_edge.data.dataset import DefectSpec
from npgmf_edge.data.mvtec_loco import DEFECTS_CONFIG, write_defects_config
from npgmf_edge.errors import ConfigError, DatasetError

RECORD_FILE = "make_data.json"
MIN_IMAGE_SIZE = 64  # below this the smallest parts and defects shrink to a few pixels
LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
# Folder -> (split, defect type, seed stream); the stream keeps each folder's images independent.
FOLDERS = {
    "train/good": ("train", "good", 0),
    "validation/good": ("validation", "good", 1),
    "test/good": ("test", "good", 2),
    f"test/{LOGICAL}": ("test", LOGICAL, 3),
    f"test/{STRUCTURAL}": ("test", STRUCTURAL, 4),
}
# Relative thresholds: the whole region must be covered. Missing parts saturate at one part's area,
# as in LOCO, because nobody can say exactly where a missing part would have been.
RELATIVE_DEFECTS = ("extra_part", "swapped_colours", "misplaced_part", *tray_scene.STRUCTURAL_ANOMALIES)
FIRST_PIXEL_VALUE = 255


@dataclass
class SyntheticConfig:
    """How much to generate; defaults make the standard demo set (60/60/20/20/20 images at 256 px).

    60 validation images, not 20: `auto` fusion needs that many to tell a logical branch's lift of about
    0.02 from chance (`fusion_choice.ADVISED_VALIDATION_IMAGES`); MVTec LOCO's categories have 62-122.
    """

    category: str = "breakfast_tray"
    seed: int = 0
    image_size: int = 256
    n_train: int = 60
    n_validation: int = 60
    n_test_good: int = 20
    n_logical: int = 20
    n_structural: int = 20

    def check(self) -> None:
        """Raise ConfigError for values that would write an unreadable or empty dataset."""
        if not self.category or self.category in (".", "..") or any(c in self.category for c in "/\\"):
            raise ConfigError(f"category {self.category!r} must be a plain folder name")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        counts = {name: getattr(self, name) for name in ("n_train", "n_validation")}
        for name, count in counts.items():
            if count < 1:
                raise ConfigError(f"{name} must be at least 1, got {count}")
        test_counts = {name: getattr(self, name) for name in ("n_test_good", "n_logical", "n_structural")}
        if any(count < 0 for count in test_counts.values()) or sum(test_counts.values()) < 1:
            raise ConfigError(f"test counts must be >= 0 with at least one test image, got {test_counts}")

    def folder_counts(self) -> dict[str, int]:
        counts = (self.n_train, self.n_validation, self.n_test_good, self.n_logical, self.n_structural)
        return dict(zip(FOLDERS, counts, strict=True))


def defects_config(image_size: int) -> list[DefectSpec]:
    """One entry per defect type, with distinct pixel values counting down from 255."""
    names = [
        *(f"missing_{c.kind.name}" for c in tray_scene.COMPARTMENTS),
        *(name for name in tray_scene.LOGICAL_ANOMALIES if name != "missing_part"),
        *tray_scene.STRUCTURAL_ANOMALIES,
    ]
    missing_area = {f"missing_{c.kind.name}": c.kind.area(image_size) for c in tray_scene.COMPARTMENTS}
    return [
        DefectSpec(
            defect_name=name,
            pixel_value=FIRST_PIXEL_VALUE - index,
            saturation_threshold=1.0 if name in RELATIVE_DEFECTS else float(missing_area[name]),
            relative_saturation=name in RELATIVE_DEFECTS,
        )
        for index, name in enumerate(names)
    ]


def render_sample(
    seed: int, stream: int, index: int, defect_type: str, image_size: int
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One (S, S, 3) uint8 RGB image and its defects as (defect name, bool mask) pairs."""
    rng = np.random.default_rng([seed, stream, index])
    parts = tray_scene.sample_good_scene(rng)
    defects: list[tuple[str, np.ndarray]] = []
    if defect_type == LOGICAL:
        anomaly = tray_scene.LOGICAL_ANOMALIES[index % len(tray_scene.LOGICAL_ANOMALIES)]
        parts, annotations = tray_scene.break_rule(rng, parts, anomaly)
        defects = [(a.defect_name, tray_scene.annotation_mask(a, image_size)) for a in annotations]
    tray = tray_scene.render_tray(rng, image_size)
    image = tray_scene.render_parts(tray, parts)
    if defect_type == STRUCTURAL:
        anomaly = tray_scene.STRUCTURAL_ANOMALIES[index % len(tray_scene.STRUCTURAL_ANOMALIES)]
        image, mask = tray_scene.damage(rng, image, tray, parts, anomaly)
        defects = [(anomaly, mask)]
    return tray_scene.finish(rng, image), defects


def _write_png(path: Path, pixels: np.ndarray) -> None:
    if not cv2.imwrite(str(path), pixels):
        raise DatasetError(f"cannot write {path}; check the disk and permissions")


def _write_category(category_dir: Path, cfg: SyntheticConfig) -> dict[str, Any]:
    """Write every image, mask and the defects config; returns the counts for the record."""
    specs = defects_config(cfg.image_size)
    value_of = {spec.defect_name: spec.pixel_value for spec in specs}
    defect_counts: Counter[str] = Counter()
    counts = {folder: n for folder, n in cfg.folder_counts().items() if n > 0}
    for folder, count in counts.items():
        _, defect_type, stream = FOLDERS[folder]
        (category_dir / folder).mkdir(parents=True)
        width = max(3, len(str(count - 1)))
        for index in range(count):
            image_id = f"{index:0{width}d}"
            image, defects = render_sample(cfg.seed, stream, index, defect_type, cfg.image_size)
            _write_png(category_dir / folder / f"{image_id}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not defects:
                continue
            masks_dir = category_dir / "ground_truth" / defect_type / image_id
            masks_dir.mkdir(parents=True)
            for k, (name, mask) in enumerate(defects):
                _write_png(masks_dir / f"{k:03d}.png", mask.astype(np.uint8) * value_of[name])
                defect_counts[name] += 1
    write_defects_config(category_dir / DEFECTS_CONFIG, specs)
    return {"counts": counts, "defects": dict(sorted(defect_counts.items()))}


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder unless asked to, and never one make-data did not write."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder; choose another OUT")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise DatasetError(
            f"{out} already exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if not (out / RECORD_FILE).is_file():
        raise DatasetError(f"{out} was not written by make-data (no {RECORD_FILE}); choose another OUT")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`; an old `out` is moved aside first, removed last."""
    if not out.exists():
        staging.rename(out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(retired / out.name)
    try:
        staging.rename(out)
    except OSError:
        (retired / out.name).rename(out)
        raise
    shutil.rmtree(retired)


def generate_dataset(out: Path, cfg: SyntheticConfig, overwrite: bool = False) -> dict[str, Any]:
    """Write the dataset to `out/<category>` atomically (staged beside `out`, renamed into place at the
    end) and return a JSON-able summary."""
    cfg.check()
    out = Path(out)
    _check_target(out, overwrite)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        written = _write_category(staging / cfg.category, cfg)
        record = {"generator": "npgmf-edge make-data", "config": asdict(cfg), **written}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp creates 0o700; the dataset should read like any other folder
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "dataset": str(out / cfg.category),
        "format": "mvtec_loco",
        "category": cfg.category,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "counts": record["counts"],
        "defects": record["defects"],
        "seconds": round(time.perf_counter() - started, 3),
    }
