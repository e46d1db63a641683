"""Image and mask decoding with explicit normalisation rules (OpenCV only, so the runtime can use it).

Every image becomes (H, W, 3) uint8 RGB, whatever it was on disk:
- greyscale is replicated to three channels (a 2-channel grey + alpha file decodes as grey);
- an alpha channel is dropped (colour kept as stored, not composited over a guessed background);
- 16-bit pixels are scaled linearly from the full 0..65535 range (value / 257, rounded);
- EXIF orientation is ignored, so an image stays pixel-aligned with its mask (masks carry no EXIF);
- with `max_pixels`, an image with more pixels (its header read first, `image_header`) is decoded reduced
  by 2, 4 or 8: JPEG while decoding, other formats decoded in full and shrunk, so those are refused above
  FULL_DECODE_FACTOR x the limit (less for costlier decoders), as is an image 1/8 cannot bring under it
  or whose header states no size; behind that, OpenCV's own `opencv_pixel_limit()` (docs/RELIABILITY.md).
Masks keep their raw 8-bit values, because MVTec LOCO AD tells defect types apart by pixel value.
OpenCV's own log lines are silenced: every failure is a DatasetError.

Example:
    >>> image = read_image(Path("test/crack/000.png"))          # (H, W, 3) uint8 RGB
    >>> mask = read_mask(Path("ground_truth/crack/000_mask.png"), expected_hw=image.shape[:2])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from npgmf_edge import OPENCV_WALL_SET_BEFORE_IMPORT
from npgmf_edge.data.dataset import DefectSpec, Sample
from npgmf_edge.data.image_header import ImageHeader, read_header
from npgmf_edge.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 127  # binary masks (MVTec AD, BTAD, folder): defect where value > 127 (anti-aliased edges)
UINT16_TO_UINT8 = 257.0  # 65535 / 255
DEFAULT_MAX_PIXELS = 16_000_000  # inspection inputs above this are decoded reduced (the model sees <= 512 px)
REDUCED_DECODING = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
OPENCV_DEFAULT_MAX_PIXELS = 1 << 30  # OpenCV's CV_IO_MAX_IMAGE_PIXELS when its environment sets none
UNDECODABLE = "OpenCV cannot decode it (corrupt, truncated or not an image)"
FULL_DECODE_FACTOR = 16  # non-JPEG files above the limit: decoded in full (~6 bytes/pixel) up to 16 x limit

cv2.utils.logging.setLogLevel(
    cv2.utils.logging.LOG_LEVEL_SILENT
)  # decoding failures are reported as DatasetErrors, not libpng lines


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of the supported image extensions (any letter case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def opencv_pixel_limit() -> int:
    """The most pixels OpenCV decodes in this process: OPENCV_IO_MAX_IMAGE_PIXELS as it was when cv2 was
    imported (npgmf_edge sets it first), or OpenCV's default when cv2 was imported before npgmf_edge."""
    value = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "") if OPENCV_WALL_SET_BEFORE_IMPORT else ""
    return int(value) if value.isdigit() else OPENCV_DEFAULT_MAX_PIXELS


def _header(source: Path | bytes, name: str, max_pixels: int | None) -> ImageHeader | None:
    """The header of `source`; with a limit, one that states no size is a DatasetError (an unreadable
    size is never taken as "no limit")."""
    header = read_header(source)
    if header is None and max_pixels is not None:
        raise DatasetError(
            f"cannot read {name}: {UNDECODABLE[:-1]}: its header states no size, so the pixel limit "
            "cannot be checked)"
        )
    return header


def _reduction(data: bytes, path: Path, max_pixels: int | None) -> int:
    """1, or the smallest reduced-decoding factor bringing `path` (its bytes `data`) under `max_pixels`
    (from its header);
    DatasetError when decoding it would cost too much: more than 1/8 can bring under the limit, more than
    OpenCV decodes at all, or (for formats OpenCV decodes in full before reducing: all but JPEG) more than
    FULL_DECODE_FACTOR x the limit at full size (weighted by what the format's decoder costs per pixel)."""
    header = _header(data, f"image {path}", max_pixels)
    if max_pixels is None or header is None or header.pixels <= max_pixels:
        return 1
    pixels = header.pixels
    factor = next((f for f in REDUCED_DECODING if pixels <= max_pixels * f * f), None)
    scaled_while_decoding = header.format == "jpeg"
    affordable = scaled_while_decoding or pixels * header.decode_weight <= FULL_DECODE_FACTOR * max_pixels
    if not affordable or factor is None:
        raise DatasetError(
            f"image {path} is {header.width}x{header.height} ({_amount(pixels)}), too large to decode under "
            f"the limit of {_amount(max_pixels)} (only JPEG is reduced while decoding; other formats up to "
            f"{_amount(FULL_DECODE_FACTOR * max_pixels)}); shrink it, save it as JPEG, or raise --max-pixels"
        )
    if pixels > opencv_pixel_limit():  # OpenCV checks the full size, even when decoding reduced
        raise DatasetError(
            f"image {path} is {header.width}x{header.height} ({_amount(pixels)}), more than OpenCV decodes "
            f"here ({_amount(opencv_pixel_limit())}, OPENCV_IO_MAX_IMAGE_PIXELS); shrink it"
        )
    return factor


def _amount(pixels: int) -> str:
    """A pixel count as a person reads it: megapixels from 1 MP up, else the count."""
    return f"{pixels / 1e6:.0f} MP" if pixels >= 1_000_000 else f"{pixels:,} pixels"


def check_pixel_limit(paths: Sequence[Path], max_pixels: int) -> None:
    """Refuse the first image whose header says it has more than `max_pixels` pixels, or states no size.
    For evaluation, which scores maps at each image's original size against its masks, so it cannot
    decode reduced."""
    for path in paths:
        header = _header(path, f"image {path}", max_pixels)
        if header.pixels > max_pixels:
            raise DatasetError(
                f"image {path} is {header.width}x{header.height} ({header.pixels:,} pixels), above the limit "
                f"of {max_pixels:,}; evaluation scores maps at the original size against the masks, "
                "so it cannot decode it reduced: raise --max-pixels or shrink the image and its masks"
            )


def _opencv_decode(data: np.ndarray, flags: int, name: str) -> np.ndarray | None:
    """cv2.imdecode, its errors as one-line DatasetErrors (never OpenCV's multi-line assertion text)."""
    try:
        return cv2.imdecode(data, flags)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE" in str(exc.err):
            raise DatasetError(
                f"cannot read {name}: it is larger than OpenCV decodes here ({opencv_pixel_limit():,} "
                "pixels, OPENCV_IO_MAX_IMAGE_PIXELS); shrink it"
            ) from None
        reason = str(exc.err).strip().splitlines()[0] if str(exc.err).strip() else "decoder error"
        raise DatasetError(f"cannot read {name}: OpenCV cannot decode it ({reason})") from None


def _decode(path: Path, what: str, max_pixels: int | None = None) -> np.ndarray:
    """Raw pixels as stored (any depth or channel count; 8-bit BGR when reduced); a missing or undecodable
    file is a DatasetError."""
    if path.is_dir():
        raise DatasetError(f"{what} {path} is a directory, not an image file")
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    # Read once: the header checked is the one decoded (a file replaced in between cannot slip past), and
    # imdecode over a byte buffer instead of imread, which cannot read non-ASCII paths on Windows.
    data = path.read_bytes()
    if not data:
        raise DatasetError(f"cannot read {what} {path}: OpenCV cannot decode it (the file is empty)")
    factor = _reduction(data, path, max_pixels)
    flags = REDUCED_DECODING[factor] | cv2.IMREAD_IGNORE_ORIENTATION if factor > 1 else cv2.IMREAD_UNCHANGED
    pixels = _opencv_decode(np.frombuffer(data, dtype=np.uint8), flags, f"{what} {path}")
    if pixels is None:
        raise DatasetError(f"cannot read {what} {path}: {UNDECODABLE}")
    return pixels


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any supported file (greyscale, RGB, RGBA, 8 or 16 bit), reduced at decode
    when it has more than `max_pixels` pixels (None: any size OpenCV decodes)."""
    path = Path(path)
    return _to_rgb(_decode(path, "image", max_pixels), path)


def decode_image_bytes(data: bytes, max_pixels: int | None, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an encoded image in memory, with `read_image`'s rules, for a server: above
    `max_pixels` by its header it is refused before decoding, not reduced. `name` names the request item."""
    if not data:
        raise DatasetError(f"cannot read {name}: OpenCV cannot decode it (it is empty)")
    header = _header(bytes(data), name, max_pixels)
    if max_pixels is not None and header.pixels > max_pixels:
        raise DatasetError(
            f"{name} is {header.width}x{header.height} ({header.pixels:,} pixels), above the limit of "
            f"{max_pixels:,}; shrink it before sending, or start the server with a larger --max-pixels"
        )
    pixels = _opencv_decode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED, name)
    if pixels is None:
        raise DatasetError(f"cannot read {name}: {UNDECODABLE}")
    return _to_rgb(pixels, name)


def _to_rgb(pixels: np.ndarray, path: Path | str) -> np.ndarray:
    """Raw decoded pixels (any depth or channel count, BGR order) -> (H, W, 3) uint8 RGB."""
    if pixels.dtype == np.uint16:
        pixels = np.round(pixels / UINT16_TO_UINT8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise DatasetError(f"image {path} has pixel type {pixels.dtype}; convert it to 8- or 16-bit integers")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_inputs(
    items: Sequence[Path | str | np.ndarray], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> list[np.ndarray | str]:
    """Each inspection input as an RGB uint8 image, or the reason it cannot be one: a bad image costs its
    own result, never the batch. Paths are decoded (`read_image`); arrays must be (H, W, 3) uint8."""
    decoded: list[np.ndarray | str] = []
    for item in items:
        try:
            decoded.append(_as_rgb(item, max_pixels))
        except (DatasetError, OSError, cv2.error, MemoryError) as exc:
            decoded.append(f"{exc}" if isinstance(exc, DatasetError) else f"cannot read image {item}: {exc}")
    return decoded


def _as_rgb(item: Path | str | np.ndarray, max_pixels: int | None) -> np.ndarray:
    if isinstance(item, str | Path):
        return read_image(Path(item), max_pixels)
    array = np.asarray(item)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or min(array.shape[:2]) < 1:
        raise DatasetError(f"an image array must be RGB uint8 (H, W, 3), got {array.dtype} {array.shape}")
    return array


def read_mask(
    path: Path, expected_hw: tuple[int, int] | None = None, image_path: Path | None = None
) -> np.ndarray:
    """(H, W) uint8 with the raw stored values; checked against its image's (height, width) when given.
    Three equal colour channels are read as grey; differing ones are an error (no one value per pixel)."""
    path = Path(path)
    pixels = _decode(path, "mask")
    if pixels.dtype != np.uint8:
        raise DatasetError(f"mask {path} has pixel type {pixels.dtype}; save masks as 8-bit images")
    if pixels.ndim == 3:
        first = pixels[:, :, 0]
        if not all(np.array_equal(first, pixels[:, :, channel]) for channel in (1, 2)):
            raise DatasetError(
                f"mask {path} has differing colour channels; save masks as single-channel images"
            )
        pixels = np.ascontiguousarray(first)
    if expected_hw is not None and pixels.shape != tuple(expected_hw):
        image = f"its image {image_path}" if image_path is not None else "its image"
        raise DatasetError(
            f"mask {path} is {pixels.shape[0]}x{pixels.shape[1]} (height x width) but {image} is "
            f"{expected_hw[0]}x{expected_hw[1]}; a mask must have the size of its image"
        )
    return pixels


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, decoded in full (OpenCV has no header-only read)."""
    return read_image(path).shape[:2]


def read_sample_masks(sample: Sample) -> list[np.ndarray]:
    """One raw (H, W) uint8 array per mask file of `sample`, each checked against the image's size."""
    if not sample.mask_paths:
        return []
    expected_hw = image_size(sample.image_path)
    return [read_mask(path, expected_hw, sample.image_path) for path in sample.mask_paths]


@dataclass(frozen=True)
class DefectRegion:
    """One annotated defect of an MVTec LOCO AD image: where it is and how sPRO saturates on it."""

    mask: np.ndarray  # (H, W) bool
    spec: DefectSpec
    path: Path

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def defect_region(mask: np.ndarray, path: Path, defects_config: Sequence[DefectSpec]) -> DefectRegion:
    """Match a LOCO mask to its defects_config entry; each mask must hold one defect drawn with one value."""
    values = [int(v) for v in np.unique(mask) if v != 0]
    if not values:
        raise DatasetError(f"mask {path} is empty (all zero); each MVTec LOCO AD mask must hold one defect")
    if len(values) > 1:
        raise DatasetError(
            f"mask {path} holds pixel values {values}; each MVTec LOCO AD mask draws one defect in one value"
        )
    by_value = {spec.pixel_value: spec for spec in defects_config}
    if values[0] not in by_value:
        defined = ", ".join(str(v) for v in sorted(by_value))
        raise DatasetError(
            f"mask {path} has pixel value {values[0]}, which defects_config.json does not define "
            f"(defined: {defined})"
        )
    return DefectRegion(mask=mask == values[0], spec=by_value[values[0]], path=path)


def read_defect_regions(sample: Sample, defects_config: Sequence[DefectSpec]) -> list[DefectRegion]:
    """The defects of an MVTec LOCO AD sample, each matched to its defects_config entry (for sPRO)."""
    return [
        defect_region(mask, path, defects_config)
        for mask, path in zip(read_sample_masks(sample), sample.mask_paths, strict=True)
    ]


def read_ground_truth(sample: Sample, defects_config: Sequence[DefectSpec] = ()) -> np.ndarray:
    """(H, W) bool: the union of the sample's defects (all False for a good image); mask values checked
    against a LOCO `defects_config`, else binary (a pixel above MASK_THRESHOLD is defective)."""
    if sample.label == 0:
        return np.zeros(image_size(sample.image_path), dtype=bool)
    if not sample.mask_paths:
        raise DatasetError(
            f"{sample.image_path} is anomalous but has no mask; pixel metrics need a mask for every "
            "anomalous test image (check dataset.has_pixel_masks first)"
        )
    if defects_config:
        regions = [region.mask for region in read_defect_regions(sample, defects_config)]
    else:
        regions = [mask > MASK_THRESHOLD for mask in read_sample_masks(sample)]
    return np.logical_or.reduce(regions)
