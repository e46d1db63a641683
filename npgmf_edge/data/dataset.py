"""The typed records every reader returns: one `Sample` per image, one `AnomalyDataset` per category.

Readers only list files and check the layout; pixels are decoded later (`image_io`), so loading a
dataset of thousands of images takes milliseconds and a broken file is reported when it is used.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with the mask files that mark its defects (none for good images)."""

    image_path: Path
    split: str  # "train" | "validation" | "test"
    defect_type: str  # "good" for normal images, else the folder name, e.g. "logical_anomalies"
    mask_paths: tuple[Path, ...] = ()  # MVTec LOCO AD: one file per defect; other formats: at most one

    @property
    def label(self) -> int:
        """0 for a normal image, 1 for an anomalous one (the image-level ground truth)."""
        return 0 if self.defect_type == GOOD else 1

    @property
    def image_id(self) -> str:
        """The file stem, e.g. "000": the key that ties an image to its masks and score maps."""
        return self.image_path.stem


@dataclass(frozen=True)
class DefectSpec:
    """One entry of an MVTec LOCO AD `defects_config.json`: the `pixel_value` its ground-truth PNGs draw
    with, and the saturation area (a fraction of the region, or a pixel count) that counts as fully found."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_area(self, region_area: int) -> int:
        """Pixels that saturate a region of `region_area` pixels, as the official LOCO evaluation counts.

        Relative thresholds are rounded down to whole pixels; absolute ones are capped at the region's area.
        """
        if self.relative_saturation:
            return math.floor(self.saturation_threshold * region_area)
        return min(math.floor(self.saturation_threshold), region_area)


@dataclass
class AnomalyDataset:
    """One category of a dataset, split into train (good only), validation (good only) and test."""

    root: Path
    format: str  # "mvtec_ad" | "mvtec_loco" | "btad" | "folder"
    category: str
    train: list[Sample]
    validation: list[Sample]  # empty for formats without a validation split (MVTec AD, BTAD, folder)
    test: list[Sample]
    defects_config: list[DefectSpec]  # empty unless MVTec LOCO AD

    @property
    def has_pixel_masks(self) -> bool:
        """True when every anomalous test image has a mask, i.e. pixel-level metrics can be computed."""
        anomalous = [s for s in self.test if s.label == 1]
        return bool(anomalous) and all(s.mask_paths for s in anomalous)

    def counts(self) -> dict[str, int]:
        """Images per `split/defect_type`, e.g. {"train/good": 60, "test/logical_anomalies": 20}."""
        counter = Counter(f"{s.split}/{s.defect_type}" for s in (*self.train, *self.validation, *self.test))
        return dict(sorted(counter.items()))
