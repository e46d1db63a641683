"""BTAD reader: `<category>/{train/ok, test/{ok,ko}, ground_truth/ko/<id>.png|.bmp}`; `ok` maps to `good`."""

from __future__ import annotations

from pathlib import Path

from npgmf_edge.data.dataset import AnomalyDataset, Sample
from npgmf_edge.data.layout import good_samples, list_images, require_dir
from npgmf_edge.errors import DatasetError

LAYOUT = "a BTAD category needs train/ok, test/ok, test/ko and ground_truth/ko/"
MASK_EXTENSIONS = (".png", ".bmp")  # BTAD ships its masks in either, depending on the product


def read_btad(category_dir: Path) -> AnomalyDataset:
    """List a BTAD category; every `test/ko` image must have a mask of the same stem in ground_truth/ko."""
    train = good_samples(require_dir(category_dir / "train" / "ok", LAYOUT), "train")
    test = good_samples(require_dir(category_dir / "test" / "ok", LAYOUT), "test")
    mask_dir = category_dir / "ground_truth" / "ko"
    for image in list_images(require_dir(category_dir / "test" / "ko", LAYOUT)):
        candidates = [mask_dir / f"{image.stem}{extension}" for extension in MASK_EXTENSIONS]
        mask = next((path for path in candidates if path.is_file()), None)
        if mask is None:
            raise DatasetError(
                f"missing mask for test image {image}: BTAD needs ground_truth/ko/{image.stem}.png or .bmp"
            )
        test.append(Sample(image, "test", "ko", (mask,)))
    return AnomalyDataset(category_dir, "btad", category_dir.name, train, [], test, [])
