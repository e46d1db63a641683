"""Header sizes (issue 24, item 1): every format this OpenCV build decodes, read before decoding, checked
against what OpenCV itself decodes; decode bombs of every format refused under a pixel limit."""

import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from npgmf_edge.data.image_header import ImageHeader, read_header, sniff_format
from npgmf_edge.data.image_io import decode_image_bytes, decode_inputs, read_image
from npgmf_edge.errors import DatasetError

BOMB_FORMATS = ("gif", "png", "jpeg", "bmp", "tiff", "webp", "pnm", "pam", "hdr", "sunras")
WIDTH, HEIGHT = 75, 41  # distinct sides (a swap shows), each above JPEG 2000's 32 px minimum
ENCODED = {  # extension OpenCV writes -> the format the header reader must name
    ".gif": "gif", ".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".webp": "webp",
    ".pbm": "pnm", ".pgm": "pnm", ".ppm": "pnm", ".pam": "pam", ".pfm": "pfm", ".hdr": "hdr",
    ".ras": "sunras", ".jp2": "jp2", ".avif": "avif",
}  # fmt: skip
MAX_RSS_BYTES = 200 * 2**20  # the issue's bound for refusing the GIF repro


@pytest.mark.parametrize("extension", sorted(ENCODED))
def test_the_header_size_is_the_size_opencv_decodes(extension: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    if extension in (".hdr", ".pfm"):
        image = image.astype(np.float32) / 255
    elif extension in (".pbm", ".pgm"):
        image = image[:, :, 0]
    ok, encoded = cv2.imencode(extension, image)
    assert ok, extension
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (HEIGHT, WIDTH)
    assert read_header(encoded.tobytes()) == ImageHeader(ENCODED[extension], WIDTH, HEIGHT)


def test_the_issues_gif_is_read_as_unsigned_sides(craft_bomb) -> None:
    """Repro: make any small GIF, write struct.pack('<HH', 32768, 8000) into bytes 6:10. imagesize reads
    the sides as signed shorts (-32768 x 8000), which was taken as "unknown size": no limit."""
    gif = bytearray(craft_bomb("gif", 8, 8))
    gif[6:10] = struct.pack("<HH", 32768, 8000)
    assert read_header(bytes(gif)) == ImageHeader("gif", 32768, 8000)


@pytest.mark.parametrize("fmt", BOMB_FORMATS)
def test_crafted_headers_of_every_format_are_read_as_they_claim(craft_bomb, fmt: str) -> None:
    header = read_header(craft_bomb(fmt, 40000, 30000 if fmt != "webp" else 16000))
    assert (header.width, header.height) == (40000, 30000 if fmt != "webp" else 16000)
    assert header.format == fmt


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        b"P6\n12 0\n255\n" + bytes(8),  # a side of zero
        b"P7\nWIDTH 12\nDEPTH 3\nENDHDR\n",  # no HEIGHT
        b"BM" + bytes(12) + struct.pack("<Iii", 40, -12, 12),  # a negative width
        b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n",  # no resolution line
        b"\x89PNG\r\n\x1a\n\x00\x00",  # truncated before IHDR
    ],
)
def test_a_header_without_a_valid_size_is_none(data: bytes) -> None:
    assert read_header(data) is None


def test_formats_are_told_by_their_signatures() -> None:
    assert sniff_format(b"P1\n") == sniff_format(b"P6\n") == "pnm"
    assert sniff_format(b"P8\n") is None and sniff_format(b"P") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None


@pytest.mark.parametrize("fmt", BOMB_FORMATS)
def test_a_decode_bomb_of_every_format_is_refused_before_decoding(
    craft_bomb, tmp_path: Path, fmt: str
) -> None:
    """15000 x 15000 claimed (225 MP, below OpenCV's own wall): only the header check can refuse it."""
    side = 15000 if fmt != "webp" else 16000
    data = craft_bomb(fmt, side, side)
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=rf"image {path} is {side}x{side} \(\d+ MP\), too large to decode"):
        read_image(path, max_pixels=1000)
    with pytest.raises(DatasetError, match=rf"the image is {side}x{side} \([\d,]+ pixels\), above the limit"):
        decode_image_bytes(data, 1000, "the image")


def test_an_unreadable_size_under_a_limit_is_refused_not_decoded(tmp_path: Path) -> None:
    """A header that states no size is never "unknown, so unlimited" (it was, for GIFs above 32767)."""
    path = tmp_path / "no_height.pam"
    path.write_bytes(b"P7\nWIDTH 12\nDEPTH 3\nMAXVAL 255\nENDHDR\n" + bytes(64))
    (error,) = decode_inputs([path], max_pixels=1000)
    assert error == (
        f"cannot read image {path}: OpenCV cannot decode it (corrupt, truncated or not an image: its header "
        "states no size, so the pixel limit cannot be checked)"
    )


def test_opencvs_own_limit_is_a_second_wall_behind_the_header_check(craft_bomb, peak_rss, tmp_path) -> None:
    """Without a pixel limit (how training and evaluation read images) the issue's GIF reaches OpenCV,
    whose own limit (set by importing npgmf_edge) refuses 262 MP in one line; before, it decoded 7.3 GB."""
    path = tmp_path / "g.gif"
    path.write_bytes(craft_bomb("gif", 32768, 8000))
    script = f"from npgmf_edge.data import decode_inputs; print(decode_inputs([{str(path)!r}], None)[0])"
    code, out, peak = peak_rss([sys.executable, "-c", script])
    assert code == 0 and out.strip() == (
        f"cannot read image {path}: it is larger than OpenCV decodes here (256,000,000 pixels, "
        "OPENCV_IO_MAX_IMAGE_PIXELS); shrink it"
    )
    assert peak < MAX_RSS_BYTES


def test_a_wall_already_in_the_environment_is_kept(peak_rss, tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((20, 20, 3), np.uint8))
    code = (
        "from npgmf_edge.data import read_image\nfrom npgmf_edge.data.image_io import opencv_pixel_limit\n"
        f"try:\n    read_image({str(path)!r})\nexcept Exception as exc:\n    print(opencv_pixel_limit(), exc)"
    )
    _, out, _ = peak_rss([sys.executable, "-c", code], {"OPENCV_IO_MAX_IMAGE_PIXELS": "100"})
    assert (
        out.strip()
        == f"100 cannot read image {path}: it is larger than OpenCV decodes here (100 pixels, "
        + ("OPENCV_IO_MAX_IMAGE_PIXELS); shrink it")
    )


def test_a_jpeg_above_opencvs_own_limit_is_refused_from_its_header(craft_bomb, tmp_path: Path) -> None:
    """JPEG is reduced while decoding, so the pixel limit allows it up to 64 x; OpenCV's own limit (256 MP,
    checked on the full size) still refuses it, and says so, before it is handed to OpenCV."""
    path = tmp_path / "huge.jpg"
    path.write_bytes(craft_bomb("jpeg", 20000, 20000))
    with pytest.raises(DatasetError) as refused:
        read_image(path, max_pixels=16_000_000)
    assert str(refused.value) == (
        f"image {path} is 20000x20000 (400 MP), more than OpenCV decodes here (256 MP, "
        "OPENCV_IO_MAX_IMAGE_PIXELS); shrink it"
    )
