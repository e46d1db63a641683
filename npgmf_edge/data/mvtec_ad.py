"""MVTec AD reader: `<category>/{train/good, test/<type>, ground_truth/<type>/<id>_mask.png}`."""

from __future__ import annotations

from pathlib import Path

from npgmf_edge.data.dataset import GOOD, AnomalyDataset, Sample
from npgmf_edge.data.layout import good_samples, list_images, require_dir, subfolders
from npgmf_edge.errors import DatasetError

LAYOUT = "an MVTec AD category needs train/good, test/<defect type>/ and ground_truth/<defect type>/"


def read_mvtec_ad(category_dir: Path) -> AnomalyDataset:
    """List an MVTec AD category; every defective test image must have its `<id>_mask.png`."""
    train = good_samples(require_dir(category_dir / "train" / GOOD, LAYOUT), "train")
    test_dir = require_dir(category_dir / "test", LAYOUT)
    test: list[Sample] = []
    for type_dir in subfolders(test_dir):
        if type_dir.name == GOOD:
            test.extend(good_samples(type_dir, "test"))
            continue
        for image in list_images(type_dir):
            mask = category_dir / "ground_truth" / type_dir.name / f"{image.stem}_mask.png"
            if not mask.is_file():
                raise DatasetError(
                    f"missing mask {mask} for test image {image}: MVTec AD needs "
                    "ground_truth/<defect type>/<id>_mask.png for every defective test image"
                )
            test.append(Sample(image, "test", type_dir.name, (mask,)))
    if not test:
        raise DatasetError(f"no defect-type folders in {test_dir}: {LAYOUT}")
    return AnomalyDataset(category_dir, "mvtec_ad", category_dir.name, train, [], test, [])
