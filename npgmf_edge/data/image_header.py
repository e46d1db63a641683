"""The size an encoded image claims in its header, read before anything is decoded, for every format this
OpenCV build decodes (GIF, PNG, JPEG, BMP, TIFF, WebP, AVIF, JPEG 2000, PNM, PAM, PFM, Radiance HDR, Sun
raster), so a 138-byte file claiming 32768 x 8000 pixels is refused instead of allocated.

The format is told by the same signatures OpenCV's decoders check; a file matching none of them is no image
OpenCV reads. Sizes are read as the formats define them (unsigned where they are unsigned: a GIF's 16-bit
sides, a PNG's 32-bit ones); a side that is zero, negative or missing makes the header unreadable (None),
never "unknown, so unlimited".

Example:
    >>> header = read_header(Path("frame.gif"))   # ImageHeader(format='gif', width=640, height=480) or None
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imagesize

HEAD_BYTES = 1 << 16  # text headers (PAM, PFM, HDR, PNM comments) are read this far, no further
SIGNATURES = (  # (format, prefix); checked in order, as OpenCV's decoders check theirs
    ("gif", b"GIF87a"),
    ("gif", b"GIF89a"),
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("jpeg", b"\xff\xd8\xff"),
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
    ("tiff", b"II+\x00"),
    ("tiff", b"MM\x00+"),
    ("jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("j2k", b"\xff\x4f\xff\x51"),
    ("bmp", b"BM"),
    ("pam", b"P7"),
    ("pfm", b"PF"),
    ("pfm", b"Pf"),
    ("hdr", b"#?RADIANCE"),
    ("hdr", b"#?RGBE"),
    ("sunras", b"\x59\xa6\x6a\x95"),
)
PNM_MAGICS = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")
# Bytes OpenCV's decoder holds per pixel while decoding, relative to an 8-bit colour PNG (measured with
# OpenCV 5.1 on 3000 x 3000 images: PNG, BMP, TIFF, PNM, JPEG ~6 B/px; GIF 12; JPEG 2000 16; AVIF 18;
# HDR and PFM 24, as they decode to float32).
DECODE_WEIGHT = {"gif": 2, "jp2": 3, "j2k": 3, "avif": 3, "hdr": 4, "pfm": 4}


@dataclass(frozen=True)
class ImageHeader:
    """What a header claims: its format and (width, height) in pixels, both sides >= 1."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decode_weight(self) -> int:
        """How many 8-bit colour PNGs of this size decoding it costs (1 for most formats)."""
        return DECODE_WEIGHT.get(self.format, 1)


def sniff_format(head: bytes) -> str | None:
    """The format whose signature `head` starts with, or None (no decoder OpenCV has would take it)."""
    for name, prefix in SIGNATURES:
        if head.startswith(prefix):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "avif"
    if head[:2] in PNM_MAGICS:
        return "pnm"
    return None


def read_header(source: Path | bytes) -> ImageHeader | None:
    """The header of an image file or of encoded bytes; None when it names no format OpenCV decodes, or
    its size cannot be read (damaged, truncated, a side of zero)."""
    with _open(source) as handle:
        head = handle.read(HEAD_BYTES)
        name = sniff_format(head)
        if name is None:
            return None
        try:
            size = _READERS.get(name, _imagesize)(head, handle)
        except (struct.error, ValueError, LookupError, OSError):
            return None
    if size is None or min(size) < 1:
        return None
    return ImageHeader(name, int(size[0]), int(size[1]))


def _open(source: Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")


def _imagesize(head: bytes, handle: BinaryIO) -> tuple[int, int] | None:
    """PNG, JPEG, TIFF, WebP, AVIF and JP2 through `imagesize` (which reads these as their specs say)."""
    width, height = imagesize.get(handle, exif_rotation=False)
    return (width, height) if width > 0 and height > 0 else None


def _gif(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    """The logical screen (OpenCV's canvas): two unsigned little-endian 16-bit sides."""
    return struct.unpack("<HH", head[6:10])


def _bmp(head: bytes, handle: BinaryIO) -> tuple[int, int] | None:
    """A core header (12 bytes) has unsigned 16-bit sides; the others signed 32-bit ones, where a negative
    height means top-down rows and a negative width is invalid."""
    (header_size,) = struct.unpack("<I", head[14:18])
    if header_size == 12:
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return (width, abs(height)) if width > 0 else None


def _j2k(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    """A raw JPEG 2000 codestream's SIZ segment: the grid minus its offsets."""
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", head[8:24])
    return xsiz - xosiz, ysiz - yosiz


def _sunras(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    return struct.unpack(">II", head[4:12])


_TOKEN = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\S+)")


def _pnm_tokens(head: bytes, count: int) -> list[bytes]:
    """The first `count` whitespace-separated tokens after the magic, skipping # comments."""
    tokens, position = [], 2
    for _ in range(count):
        match = _TOKEN.match(head, position)
        if match is None:
            raise ValueError("truncated netpbm header")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _pnm(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    """PBM / PGM / PPM (P1-P6) and PFM: width and height are the first two decimal tokens."""
    width, height = _pnm_tokens(head, 2)
    return int(width), int(height)


def _pam(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    """PAM (P7): WIDTH and HEIGHT lines before ENDHDR."""
    fields = dict(re.findall(rb"^\s*(WIDTH|HEIGHT)\s+(\d+)", head.split(b"ENDHDR")[0], re.MULTILINE))
    return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])


def _hdr(head: bytes, handle: BinaryIO) -> tuple[int, int]:
    """Radiance: text lines up to an empty one, then the resolution line (`-Y 480 +X 640`, or X first)."""
    _, _, rest = head.partition(b"\n\n")
    axis1, size1, _axis2, size2 = rest.split(b"\n", 1)[0].split()[:4]
    return (int(size2), int(size1)) if axis1[1:2] == b"Y" else (int(size1), int(size2))


_READERS = {"gif": _gif, "bmp": _bmp, "j2k": _j2k, "sunras": _sunras, "pnm": _pnm, "pfm": _pnm,
            "pam": _pam, "hdr": _hdr}  # fmt: skip
