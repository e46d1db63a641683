"""MVTec AD reader: `<category>/{train/good, test/<type>, ground_truth/<type>/<id>_mask.png}`."""

from __future__ import annotations

from pathlib import Path

from npgmf_edge.data.dataset import GOOD, AnomalyDataset
from npgmf_edge.data.layout import defect_test_samples, good_samples, require_dir
from npgmf_edge.errors import DatasetError

LAYOUT = "an MVTec AD category needs train/good, test/<defect type>/ and ground_truth/<defect type>/"


def read_mvtec_ad(category_dir: Path) -> AnomalyDataset:
    """List an MVTec AD category; every defective test image must have its `<id>_mask.png`."""
    train = good_samples(require_dir(category_dir / "train" / GOOD, LAYOUT), "train")
    test = defect_test_samples(category_dir, LAYOUT, _mask)
    return AnomalyDataset(category_dir, "mvtec_ad", category_dir.name, train, [], test, [])


def _mask(image: Path, truth_dir: Path) -> tuple[Path]:
    """The one `<id>_mask.png` of a defective test image."""
    mask = truth_dir / f"{image.stem}_mask.png"
    if not mask.is_file():
        raise DatasetError(
            f"missing mask {mask} for test image {image}: MVTec AD needs "
            "ground_truth/<defect type>/<id>_mask.png for every defective test image"
        )
    return (mask,)
