"""Real images: the magnetic-tile subset in ../shared (masks beside images) through the folder reader."""

from pathlib import Path

import numpy as np
import pytest

from npgmf_edge.data import MASK_THRESHOLD, load_dataset, read_image, read_sample_masks

MAGNETIC_TILE = Path(__file__).parents[2].parent / "shared/data/magnetic_tile"

pytestmark = pytest.mark.skipif(
    not MAGNETIC_TILE.is_dir(), reason=f"real magnetic-tile images not found at {MAGNETIC_TILE}"
)


def test_magnetic_tile_reads_with_masks_beside_the_images() -> None:
    dataset = load_dataset(
        MAGNETIC_TILE,
        normal_dir="MT_Free/Imgs",
        abnormal_dirs={"blowhole": "MT_Blowhole/Imgs", "crack": "MT_Crack/Imgs"},
    )
    assert (dataset.format, dataset.category) == ("folder", "magnetic_tile")
    assert dataset.counts() == {"test/blowhole": 115, "test/crack": 57, "test/good": 80, "train/good": 320}
    assert all(s.image_path.suffix == ".jpg" for s in (*dataset.train, *dataset.test))
    defective = [s for s in dataset.test if s.label == 1]
    assert all(s.mask_paths == (s.image_path.with_suffix(".png"),) for s in defective)
    assert dataset.has_pixel_masks
    for sample in defective[::10]:  # every 10th: decoding all 172 pairs adds nothing but time
        image = read_image(sample.image_path)
        [mask] = read_sample_masks(sample)
        assert image.shape[:2] == mask.shape and image.dtype == np.uint8
        assert np.array_equal(image[:, :, 0], image[:, :, 1])  # greyscale source, replicated
        assert (mask > MASK_THRESHOLD).any()
