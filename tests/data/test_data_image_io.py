"""Image and mask decoding: explicit normalisation rules, raw mask values, and one error per failure."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from npgmf_edge.data import (
    DefectSpec,
    Sample,
    decode_inputs,
    read_defect_regions,
    read_ground_truth,
    read_image,
    read_mask,
    read_sample_masks,
)
from npgmf_edge.errors import DatasetError

SPECS = [DefectSpec("missing", 255, 100.0, False), DefectSpec("scratch", 200, 1.0, True)]


def test_greyscale_image_is_replicated_to_three_equal_channels(tmp_path, writer) -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image = read_image(writer(tmp_path / "g.png", pixels))
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert all(np.array_equal(image[:, :, c], pixels) for c in range(3))


def test_colour_image_comes_back_in_rgb_order(tmp_path, writer) -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[:, :, 2] = 200  # red in OpenCV's BGR order
    image = read_image(writer(tmp_path / "red.png", bgr))
    assert image[0, 0].tolist() == [200, 0, 0]


def test_alpha_channel_is_dropped_and_colour_kept_as_stored(tmp_path, writer) -> None:
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    image = read_image(writer(tmp_path / "rgba.png", bgra))
    assert image.shape == (2, 2, 3)
    assert image[1, 1].tolist() == [30, 20, 10]


def test_16_bit_pixels_scale_linearly_from_the_full_range(tmp_path, writer) -> None:
    pixels = np.array([[0, 128, 129, 257 * 100, 65535]], dtype=np.uint16)
    image = read_image(writer(tmp_path / "deep.png", pixels))
    assert image[0, :, 0].tolist() == [0, 0, 1, 100, 255]


def test_16_bit_colour_image_is_scaled_and_reordered(tmp_path, writer) -> None:
    bgr = np.zeros((1, 1, 3), dtype=np.uint16)
    bgr[0, 0] = (0, 257 * 10, 65535)
    assert read_image(writer(tmp_path / "deep_rgb.png", bgr))[0, 0].tolist() == [255, 10, 0]


def test_jpeg_of_any_size_is_read(tmp_path, writer) -> None:
    image = read_image(writer(tmp_path / "photo.jpg", np.full((7, 13, 3), 90, dtype=np.uint8)))
    assert image.shape == (7, 13, 3)


def test_float_tiff_is_refused_with_a_conversion_hint(tmp_path) -> None:
    path = tmp_path / "float.tiff"
    tifffile.imwrite(path, np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DatasetError) as error:
        read_image(path)
    assert str(error.value) == f"image {path} has pixel type float32; convert it to 8- or 16-bit integers"


def test_missing_image_names_the_file(tmp_path) -> None:
    path = tmp_path / "gone.png"
    with pytest.raises(DatasetError) as error:
        read_image(path)
    assert str(error.value) == f"image {path} does not exist"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "the file is empty"), (b"not an image at all", "corrupt, truncated or not an image")],
)
def test_undecodable_image_names_the_file(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as error:
        read_image(path)
    assert str(error.value) == f"cannot read image {path}: OpenCV cannot decode it ({reason})"


def test_a_folder_given_as_an_image_is_a_directory_not_missing(tmp_path) -> None:
    with pytest.raises(DatasetError, match=f"^image {tmp_path} is a directory, not an image file$"):
        read_image(tmp_path)


def test_two_channel_grey_and_alpha_image_reads_as_its_grey(tmp_path) -> None:
    pixels = np.zeros((4, 5, 2), np.uint8)
    pixels[..., 0], pixels[..., 1] = 90, 255
    path = tmp_path / "two.tiff"
    tifffile.imwrite(path, pixels, photometric="minisblack", planarconfig="contig")
    image = read_image(path)
    assert image.shape == (4, 5, 3) and (image == 90).all()


def test_image_above_the_pixel_limit_is_decoded_reduced(tmp_path, writer) -> None:
    bgr = np.zeros((64, 96, 3), np.uint8)
    bgr[:, :48] = (0, 0, 255)  # left half red
    path = writer(tmp_path / "big.png", bgr)
    assert read_image(path, max_pixels=64 * 96).shape == (64, 96, 3)
    reduced = read_image(path, max_pixels=64 * 96 // 4)  # needs 1/2 per side
    assert reduced.shape == (32, 48, 3)
    assert tuple(reduced[0, 0]) == (255, 0, 0) and tuple(reduced[0, -1]) == (0, 0, 0)
    assert read_image(path, max_pixels=64 * 96 // 5).shape == (16, 24, 3)  # 1/2 is not enough: 1/4


def test_png_that_would_be_decoded_in_full_far_above_the_limit_is_refused(tmp_path, writer) -> None:
    path = writer(tmp_path / "huge.png", np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"is 80x80 \(6,400 pixels\), too large to decode under the limit"):
        read_image(path, max_pixels=80 * 80 // 17)  # 1/8 would do, but OpenCV decodes PNG in full first


def test_jpeg_far_above_the_limit_is_reduced_while_decoding(tmp_path) -> None:
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), np.full((80, 80, 3), 128, np.uint8))
    assert read_image(path, max_pixels=80 * 80 // 60).shape == (10, 10, 3)
    with pytest.raises(DatasetError, match="too large to decode"):
        read_image(path, max_pixels=80 * 80 // 65)  # not even 1/8 is enough


def test_each_input_decodes_alone_a_bad_one_becomes_its_reason(tmp_path, writer) -> None:
    good = writer(tmp_path / "good.png", np.zeros((3, 4, 3), np.uint8))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    decoded = decode_inputs(
        [good, empty, tmp_path, np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8)]
    )
    assert [item.shape if isinstance(item, np.ndarray) else None for item in decoded] == [
        (3, 4, 3), None, None, None, (2, 2, 3)
    ]  # fmt: skip
    assert decoded[1].endswith("(the file is empty)") and "is a directory" in decoded[2]
    assert decoded[3] == "an image array must be RGB uint8 (H, W, 3), got uint8 (2, 2)"


def test_opencv_prints_nothing_on_a_truncated_png(tmp_path) -> None:
    path = tmp_path / "cut.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:400])
    code = f"from npgmf_edge.data import decode_inputs; print(decode_inputs([{str(path)!r}])[0])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    assert done.stdout.startswith(f"cannot read image {path}: OpenCV cannot decode it")


def test_mask_keeps_raw_pixel_values(tmp_path, writer) -> None:
    pixels = np.array([[0, 7, 200, 255]], dtype=np.uint8)
    mask = read_mask(writer(tmp_path / "m.png", pixels))
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 7, 200, 255]]


def test_mask_saved_with_three_equal_channels_reads_as_grey(tmp_path, writer) -> None:
    pixels = np.array([[0, 255]], dtype=np.uint8)
    mask = read_mask(writer(tmp_path / "m.bmp", cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)))
    assert mask.tolist() == [[0, 255]]


def test_mask_with_differing_colour_channels_is_refused(tmp_path, writer) -> None:
    bgr = np.zeros((2, 2, 3), dtype=np.uint8)
    bgr[:, :, 2] = 1
    path = writer(tmp_path / "m.png", bgr)
    with pytest.raises(DatasetError) as error:
        read_mask(path)
    assert str(error.value) == (
        f"mask {path} has differing colour channels; save masks as single-channel images"
    )


def test_16_bit_mask_is_refused(tmp_path, writer) -> None:
    path = writer(tmp_path / "m.png", np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(DatasetError) as error:
        read_mask(path)
    assert str(error.value) == f"mask {path} has pixel type uint16; save masks as 8-bit images"


def test_mask_size_mismatch_names_the_mask_and_the_image_size(tmp_path, writer) -> None:
    path = writer(tmp_path / "m.png", np.zeros((5, 6), dtype=np.uint8))
    with pytest.raises(DatasetError) as error:
        read_mask(path, expected_hw=(5, 7))
    assert str(error.value) == (
        f"mask {path} is 5x6 (height x width) but its image is 5x7; a mask must have the size of its image"
    )


def test_sample_masks_are_checked_against_their_image(tmp_path, writer) -> None:
    image = writer(tmp_path / "img.png", np.zeros((8, 8), dtype=np.uint8))
    good_mask = writer(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    bad_mask = writer(tmp_path / "b.png", np.zeros((8, 9), dtype=np.uint8))
    assert [m.shape for m in read_sample_masks(Sample(image, "test", "x", (good_mask,)))] == [(8, 8)]
    with pytest.raises(DatasetError) as error:
        read_sample_masks(Sample(image, "test", "x", (good_mask, bad_mask)))
    assert str(error.value) == (
        f"mask {bad_mask} is 8x9 (height x width) but its image {image} is 8x8; "
        "a mask must have the size of its image"
    )


def test_good_sample_has_no_masks(tmp_path, writer) -> None:
    image = writer(tmp_path / "img.png", np.zeros((3, 3), dtype=np.uint8))
    assert read_sample_masks(Sample(image, "train", "good")) == []


def _loco_sample(tmp_path: Path, writer, *masks: np.ndarray) -> Sample:
    image = writer(tmp_path / "000.png", np.zeros((6, 6), dtype=np.uint8))
    paths = tuple(writer(tmp_path / "gt" / f"{k:03d}.png", m) for k, m in enumerate(masks))
    return Sample(image, "test", "logical_anomalies", paths)


def _region(value: int, rows: slice) -> np.ndarray:
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[rows, :] = value
    return mask


def test_defect_regions_are_matched_to_their_spec_by_pixel_value(tmp_path, writer) -> None:
    sample = _loco_sample(tmp_path, writer, _region(255, slice(0, 2)), _region(200, slice(4, 5)))
    regions = read_defect_regions(sample, SPECS)
    assert [(r.spec.defect_name, r.area, r.path.name) for r in regions] == [
        ("missing", 12, "000.png"),
        ("scratch", 6, "001.png"),
    ]
    assert regions[0].mask.dtype == bool


def test_mask_value_missing_from_defects_config_names_the_file(tmp_path, writer) -> None:
    sample = _loco_sample(tmp_path, writer, _region(17, slice(0, 2)))
    with pytest.raises(DatasetError) as error:
        read_defect_regions(sample, SPECS)
    assert str(error.value) == (
        f"mask {sample.mask_paths[0]} has pixel value 17, which defects_config.json does not define "
        "(defined: 200, 255)"
    )


def test_loco_mask_with_two_values_is_refused(tmp_path, writer) -> None:
    sample = _loco_sample(tmp_path, writer, _region(255, slice(0, 2)) | _region(200, slice(3, 4)))
    with pytest.raises(DatasetError) as error:
        read_defect_regions(sample, SPECS)
    assert str(error.value) == (
        f"mask {sample.mask_paths[0]} holds pixel values [200, 255]; "
        "each MVTec LOCO AD mask draws one defect in one value"
    )


def test_empty_loco_mask_is_refused(tmp_path, writer) -> None:
    sample = _loco_sample(tmp_path, writer, np.zeros((6, 6), dtype=np.uint8))
    with pytest.raises(DatasetError) as error:
        read_defect_regions(sample, SPECS)
    assert str(error.value) == (
        f"mask {sample.mask_paths[0]} is empty (all zero); each MVTec LOCO AD mask must hold one defect"
    )


def test_ground_truth_of_a_good_image_is_all_false_at_image_size(tmp_path, writer) -> None:
    image = writer(tmp_path / "img.png", np.zeros((4, 5), dtype=np.uint8))
    truth = read_ground_truth(Sample(image, "test", "good"))
    assert truth.shape == (4, 5) and truth.dtype == bool and not truth.any()


def test_binary_ground_truth_thresholds_above_127(tmp_path, writer) -> None:
    image = writer(tmp_path / "img.png", np.zeros((1, 4), dtype=np.uint8))
    mask = writer(tmp_path / "m.png", np.array([[0, 127, 128, 255]], dtype=np.uint8))
    truth = read_ground_truth(Sample(image, "test", "crack", (mask,)))
    assert truth.tolist() == [[False, False, True, True]]


def test_loco_ground_truth_is_the_union_of_all_defects(tmp_path, writer) -> None:
    sample = _loco_sample(tmp_path, writer, _region(255, slice(0, 2)), _region(200, slice(4, 5)))
    truth = read_ground_truth(sample, SPECS)
    assert truth.sum() == 18 and truth[0:2].all() and truth[4].all() and not truth[2:4].any()


def test_anomalous_sample_without_mask_has_no_ground_truth(tmp_path, writer) -> None:
    image = writer(tmp_path / "img.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(DatasetError) as error:
        read_ground_truth(Sample(image, "test", "crack"))
    assert str(error.value) == (
        f"{image} is anomalous but has no mask; pixel metrics need a mask for every anomalous test image "
        "(check dataset.has_pixel_masks first)"
    )


@pytest.mark.parametrize(
    ("spec", "area", "expected"),
    [
        (DefectSpec("rel", 1, 1.0, True), 37, 37),
        (DefectSpec("rel", 1, 0.5, True), 37, 18),  # rounded down to whole pixels
        (DefectSpec("abs", 1, 100.0, False), 37, 37),  # capped at the region's area
        (DefectSpec("abs", 1, 20.0, False), 37, 20),
    ],
)
def test_saturation_area_follows_the_official_rounding(spec: DefectSpec, area: int, expected: int) -> None:
    assert spec.saturation_area(area) == expected


def test_sample_label_and_id_come_from_defect_type_and_file_stem() -> None:
    good = Sample(Path("test/good/007.png"), "test", "good")
    defective = Sample(Path("test/crack/012.png"), "test", "crack", (Path("gt/012_mask.png"),))
    assert (good.label, good.image_id) == (0, "007")
    assert (defective.label, defective.image_id) == (1, "012")
