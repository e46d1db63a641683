"""The data layer: readers for MVTec AD, MVTec LOCO AD, BTAD and generic folders, image I/O, and the
synthetic LOCO-style generator (`npgmf_edge.data.synthetic`). docs/DATA.md describes the formats.

Example:
    >>> dataset = load_dataset(Path("mvtec_loco"), category="breakfast_box")
    >>> image = read_image(dataset.test[0].image_path)      # (H, W, 3) uint8 RGB
"""

from npgmf_edge.data.dataset import AnomalyDataset, DefectSpec, Sample
from npgmf_edge.data.image_io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MASK_THRESHOLD,
    DefectRegion,
    decode_inputs,
    read_defect_regions,
    read_ground_truth,
    read_image,
    read_mask,
    read_sample_masks,
)
from npgmf_edge.data.loader import FORMATS, detect_format, load_dataset

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "MASK_THRESHOLD",
    "AnomalyDataset",
    "DefectRegion",
    "DefectSpec",
    "Sample",
    "decode_inputs",
    "detect_format",
    "load_dataset",
    "read_defect_regions",
    "read_ground_truth",
    "read_image",
    "read_mask",
    "read_sample_masks",
]
