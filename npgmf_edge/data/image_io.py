"""Image and mask decoding with explicit normalisation rules (OpenCV only, so the runtime can use it).

Every image becomes (H, W, 3) uint8 RGB, whatever it was on disk:
- greyscale is replicated to three channels (a 2-channel grey + alpha file decodes as grey);
- an alpha channel is dropped (colour kept as stored, not composited over a guessed background);
- 16-bit pixels are scaled linearly from the full 0..65535 range (value / 257, rounded);
- EXIF orientation is ignored, so an image stays pixel-aligned with its mask (masks carry no EXIF);
- with `max_pixels`, an image with more pixels (read from its header first) is decoded reduced by 2, 4 or 8
  (OpenCV's reduced decoding). JPEG scales while decoding (a 20000 x 20000 JPEG costs ~100 MB); other
  formats are decoded in full and then shrunk (3 bytes per pixel), so they are refused above
  FULL_DECODE_FACTOR x the limit, as is any image that 1/8 cannot bring under it.
Masks keep their raw 8-bit values, because MVTec LOCO AD tells defect types apart by pixel value.
OpenCV's own log lines (libpng warnings on a truncated file) are silenced: every failure is a DatasetError.

Example:
    >>> image = read_image(Path("test/crack/000.png"))          # (H, W, 3) uint8 RGB
    >>> mask = read_mask(Path("ground_truth/crack/000_mask.png"), expected_hw=image.shape[:2])
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagesize
import numpy as np

from npgmf_edge.data.dataset import DefectSpec, Sample
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
OPENCV_MAX_PIXELS = 1 << 30  # OpenCV refuses to decode more (its CV_IO_MAX_IMAGE_PIXELS default)
FULL_DECODE_FACTOR = 16  # non-JPEG files above the limit: decoded in full (3 bytes/pixel) up to 16 x limit
JPEG_MAGIC = b"\xff\xd8\xff"

cv2.utils.logging.setLogLevel(
    cv2.utils.logging.LOG_LEVEL_SILENT
)  # decoding failures are reported as DatasetErrors, not libpng lines


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of the supported image extensions (any letter case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _reduction(path: Path, max_pixels: int | None) -> int:
    """1, or the smallest reduced-decoding factor bringing `path` under `max_pixels` (from its header);
    DatasetError when decoding it would cost too much: more than 1/8 can bring under the limit, more than
    OpenCV decodes at all, or (for formats OpenCV decodes in full before reducing: all but JPEG) more than
    FULL_DECODE_FACTOR x the limit at full size."""
    width, height = imagesize.get(path)  # (-1, -1) when the header is unknown or damaged: OpenCV decides
    pixels = width * height
    if max_pixels is None or width < 0 or pixels <= max_pixels:
        return 1
    factor = next((f for f in REDUCED_DECODING if pixels <= max_pixels * f * f), None)
    with path.open("rb") as handle:
        scaled_while_decoding = handle.read(len(JPEG_MAGIC)) == JPEG_MAGIC
    affordable = scaled_while_decoding or pixels <= FULL_DECODE_FACTOR * max_pixels
    if affordable and factor is not None and pixels <= OPENCV_MAX_PIXELS:
        return factor
    raise DatasetError(
        f"image {path} is {width}x{height} ({pixels / 1e6:.0f} MP), too large to decode under the limit of "
        f"{max_pixels / 1e6:.0f} MP (only JPEG is reduced while decoding; other formats up to "
        f"{FULL_DECODE_FACTOR * max_pixels / 1e6:.0f} MP); shrink it, save it as JPEG, or raise --max-pixels"
    )


def check_pixel_limit(paths: Sequence[Path], max_pixels: int) -> None:
    """Refuse the first image whose header says it has more than `max_pixels` pixels. For evaluation,
    which scores maps at each image's original size against its masks, so it cannot decode reduced."""
    for path in paths:
        width, height = imagesize.get(path)  # (-1, -1) for an unknown header: decoding will judge it
        if width * height > max_pixels and width > 0:
            raise DatasetError(
                f"image {path} is {width}x{height} ({width * height:,} pixels), above the limit of "
                f"{max_pixels:,}; evaluation scores maps at the original size against the masks, "
                "so it cannot decode it reduced: raise --max-pixels or shrink the image and its masks"
            )


def _decode(path: Path, what: str, max_pixels: int | None = None) -> np.ndarray:
    """Raw pixels as stored (any depth or channel count; 8-bit BGR when reduced); a missing or undecodable
    file is a DatasetError."""
    if path.is_dir():
        raise DatasetError(f"{what} {path} is a directory, not an image file")
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    factor = _reduction(path, max_pixels)
    flags = REDUCED_DECODING[factor] | cv2.IMREAD_IGNORE_ORIENTATION if factor > 1 else cv2.IMREAD_UNCHANGED
    # imdecode over a byte buffer instead of imread: imread cannot read non-ASCII paths on Windows.
    data = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(data, flags) if data.size else None
    if pixels is None:
        reason = "the file is empty" if not data.size else "corrupt, truncated or not an image"
        raise DatasetError(f"cannot read {what} {path}: OpenCV cannot decode it ({reason})")
    return pixels


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any supported file (greyscale, RGB, RGBA, 8 or 16 bit), reduced at decode
    when it has more than `max_pixels` pixels (None: any size OpenCV decodes)."""
    path = Path(path)
    return _to_rgb(_decode(path, "image", max_pixels), path)


def decode_image_bytes(data: bytes, max_pixels: int | None, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 RGB from an encoded image in memory (PNG, JPEG, ...), with `read_image`'s rules.

    For a server: an image whose header says it has more than `max_pixels` pixels is refused before
    anything is decoded (not reduced, as `read_image` does), so one request cannot claim more memory than
    the limit allows. `name` says which request item the error is about."""
    width, height = imagesize.get(io.BytesIO(data))  # (-1, -1) when unknown or damaged: OpenCV decides
    if max_pixels is not None and width > 0 and width * height > max_pixels:
        raise DatasetError(
            f"{name} is {width}x{height} ({width * height:,} pixels), above the limit of {max_pixels:,}; "
            "shrink it before sending, or start the server with a larger --max-pixels"
        )
    buffer = np.frombuffer(data, dtype=np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if pixels is None:
        reason = "it is empty" if not buffer.size else "corrupt, truncated or not an image"
        raise DatasetError(f"cannot read {name}: OpenCV cannot decode it ({reason})")
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

    A mask saved with three equal colour channels is accepted as grey; differing channels are an error,
    because no single value per pixel could be trusted.
    """
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
    """(H, W) bool: the union of the sample's defects (all False for a good image).

    With a LOCO `defects_config`, every mask value is checked against it; without one, masks are binary
    and a pixel is defective where its value exceeds MASK_THRESHOLD.
    """
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
