"""libnpgmf's PNG decoding against Python's (issue 21): Debian's OpenCV (4.6, Debian's libpng) in native,
the wheel's cv2 (5.x, its own libpng) in Python; the RGB pixels must be those of the Python runtime's
`decode_image_bytes` (cv2.imdecode IMREAD_UNCHANGED, then 16-bit to round(v / 257), grey/BGR/BGRA to RGB).
It was written for a libspng fast path, measured and not kept (docs/BENCHMARKS.md); it guards any other
decoder change the same way.

The variants are written here byte by byte (every colour type and bit depth, tRNS, Adam7 interlacing, all
five row filters, gAMA/sBIT/text chunks, odd sizes) and by cv2.imwrite (libpng's own filter choices), plus
damaged files (CRC, Adler-32, truncation, trailing bytes, unknown critical chunk), where both runtimes must
agree on refusing. Run on the release and the ASan + UBSan builds.
"""

from __future__ import annotations

import json
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from native_build import build

from npgmf_edge.data.image_io import decode_image_bytes
from npgmf_edge.errors import NpgmfError

MAX_PIXELS = 16_000_000  # the native default (kDefaultMaxPixels), Python's default too
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _pack(row: np.ndarray, depth: int) -> bytes:
    """One row of samples (flattened) as PNG stores it: big-endian 16-bit, or 1/2/4-bit packed MSB first."""
    if depth == 16:
        return row.astype(">u2").tobytes()
    if depth == 8:
        return row.astype(np.uint8).tobytes()
    per_byte = 8 // depth
    padded = np.zeros(-(-row.size // per_byte) * per_byte, dtype=np.uint16)
    padded[: row.size] = row
    shifts = np.arange(per_byte - 1, -1, -1) * depth
    return (padded.reshape(-1, per_byte) << shifts).sum(axis=1).astype(np.uint8).tobytes()


def _filter(raw: bytes, prior: bytes, kind: int, bpp: int) -> bytes:
    """PNG row filter `kind` (0 none, 1 sub, 2 up, 3 average, 4 Paeth) of one row, as the spec defines it."""
    x = np.frombuffer(raw, np.uint8).astype(np.int16)
    b = np.frombuffer(prior, np.uint8).astype(np.int16)
    a = np.concatenate([np.zeros(bpp, np.int16), x[:-bpp]]) if bpp < x.size else np.zeros_like(x)
    c = np.concatenate([np.zeros(bpp, np.int16), b[:-bpp]]) if bpp < b.size else np.zeros_like(b)
    if kind == 0:
        predicted = np.zeros_like(x)
    elif kind == 1:
        predicted = a
    elif kind == 2:
        predicted = b
    elif kind == 3:
        predicted = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        predicted = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes()


def _png(
    samples: np.ndarray, colour: int, depth: int, *, interlace: bool = False, chunks: tuple = ()
) -> bytes:
    """A PNG of `samples` (H, W, C sample values) with every row filter in turn; `chunks`: (type, body)
    pairs written before IDAT (PLTE, tRNS, gAMA, ...)."""
    height, width, channels = samples.shape
    bpp = max(1, channels * depth // 8)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    stream, row_number = b"", 0
    for x0, y0, dx, dy in passes:
        part = samples[y0::dy, x0::dx]
        if part.size == 0:
            continue
        prior = b"\0" * len(_pack(part[0].reshape(-1), depth))
        for row in part:
            raw = _pack(row.reshape(-1), depth)
            stream += _filter(raw, prior, row_number % 5, bpp)
            prior, row_number = raw, row_number + 1
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlace))
    body = b"".join(_chunk(kind, data) for kind, data in chunks)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + body
        + _chunk(b"IDAT", zlib.compress(stream, 6)) + _chunk(b"IEND", b"")
    )  # fmt: skip


def _random(height: int, width: int, channels: int, depth: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**depth, (height, width, channels), dtype=np.uint32)


def _variants() -> dict[str, bytes]:
    """name -> PNG bytes."""
    plte = np.random.default_rng(9).integers(0, 256, (256, 3), dtype=np.uint8).tobytes()
    gamma = (b"gAMA", struct.pack(">I", 45455))
    text = (b"tEXt", b"Comment\0station 4")
    variants: dict[str, bytes] = {}
    for interlace in (False, True):
        tag = " interlaced" if interlace else ""
        for colour, name in ((2, "rgb"), (6, "rgba"), (0, "grey"), (4, "grey+alpha")):
            channels = CHANNELS[colour]
            for height, width in ((23, 37), (1, 1), (1, 41), (17, 2)):
                samples = _random(height, width, channels, 8, height * width + colour)
                png = _png(samples, colour, 8, interlace=interlace)
                variants[f"{name} 8-bit {height}x{width}{tag}"] = png
            samples = _random(19, 31, channels, 16, colour)
            variants[f"{name} 16-bit{tag}"] = _png(samples, colour, 16, interlace=interlace)
        rgb = _random(21, 13, 3, 8, 1)
        trns_rgb = (b"tRNS", struct.pack(">HHH", *map(int, rgb[0, 0])))
        variants[f"rgb 8-bit + tRNS{tag}"] = _png(rgb, 2, 8, interlace=interlace, chunks=(trns_rgb,))
        grey = _random(21, 13, 1, 8, 2)
        trns_grey = (b"tRNS", struct.pack(">H", int(grey[0, 0, 0])))
        variants[f"grey 8-bit + tRNS{tag}"] = _png(grey, 0, 8, interlace=interlace, chunks=(trns_grey,))
        sbit = (b"sBIT", bytes([5, 6, 5]))
        chunks = (gamma, sbit, text)
        variants[f"rgb 8-bit + gAMA sBIT tEXt{tag}"] = _png(rgb, 2, 8, interlace=interlace, chunks=chunks)
        for depth in (1, 2, 4):
            samples = _random(11, 29, 1, depth, depth)
            variants[f"grey {depth}-bit{tag}"] = _png(samples, 0, depth, interlace=interlace)
        for depth in (1, 2, 4, 8):
            samples = _random(11, 29, 1, depth, depth + 10)
            palette = (b"PLTE", plte[: 3 * 2**depth])
            variants[f"palette {depth}-bit{tag}"] = _png(
                samples, 3, depth, interlace=interlace, chunks=(palette,)
            )
            alpha = (b"tRNS", bytes(range(0, 2**depth, 3)))
            variants[f"palette {depth}-bit + tRNS{tag}"] = _png(
                samples, 3, depth, interlace=interlace, chunks=(palette, alpha)
            )
    pixels = np.random.default_rng(3).integers(0, 256, (48, 65, 4), dtype=np.uint8)
    smooth = cv2.GaussianBlur(pixels, (0, 0), 3)  # libpng picks varied filters on smooth images
    for name, image in (
        ("bgr", smooth[..., :3]), ("bgra", smooth), ("grey", smooth[..., 0]),
        ("bgr 16-bit", smooth[..., :3].astype(np.uint16) * 257 + 3),
    ):  # fmt: skip
        variants[f"cv2.imwrite {name}"] = cv2.imencode(".png", image)[1].tobytes()
    return variants


def _damaged() -> dict[str, bytes]:
    """Damaged 8-bit RGB PNGs: each must be refused where Python refuses it, or give Python's pixels."""
    good = _png(_random(23, 37, 3, 8, 5), 2, 8, chunks=((b"tEXt", b"Comment\0x"),))
    idat = good.index(b"IDAT")
    length = struct.unpack(">I", good[idat - 4 : idat])[0]
    text = good.index(b"tEXt")
    damaged = {
        "truncated in IDAT": good[: idat + 40],
        "truncated before IEND": good[:-12],
        "no IEND": good[:-12] + b"\0" * 12,
        "IDAT CRC flipped": _flip(good, idat + 4 + length),
        "tEXt CRC flipped": _flip(good, text + 4 + len(b"Comment\0x")),
        "bytes after IEND": good + b"garbage after the end",
        "unknown critical chunk": good[: idat - 4] + _chunk(b"ABCD", b"1234") + good[idat - 4 :],
    }
    stream = bytearray(good[idat + 4 : idat + 4 + length])
    stream[-2] ^= 0x55  # the Adler-32 of the zlib stream, the chunk's CRC recomputed
    damaged["Adler-32 wrong"] = good[: idat - 4] + _chunk(b"IDAT", bytes(stream)) + good[idat + 8 + length :]
    return damaged


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _native(variant: str, cases: dict[str, bytes], folder: Path) -> list[dict]:
    """npgmf_decode_test of the `variant` build on each case's bytes, written to files under `folder`:
    per case its error ("" when decoded) and its RGB pixels."""
    files = []
    for k, data in enumerate(cases.values()):
        files.append(folder / f"{k}.png")
        files[-1].write_bytes(data)
    out = folder / "out"
    out.mkdir()
    binary = build(variant) / "npgmf_decode_test"
    done = subprocess.run([binary, out, *files], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    for k, line in enumerate(lines):
        if not line["error"]:
            raw = np.fromfile(out / f"{k}.rgb", dtype=np.uint8)
            line["pixels"] = raw.reshape(line["height"], line["width"], 3)
    return lines


def _python(data: bytes) -> np.ndarray | None:
    try:
        return decode_image_bytes(data, MAX_PIXELS)
    except NpgmfError:
        return None


@pytest.mark.parametrize("variant", ["release", "address"])
@pytest.mark.parametrize("kind", ["variants", "damaged"])
def test_pngs_decode_to_the_python_runtimes_pixels_or_are_refused_alike(variant, kind, tmp_path):
    cases = _variants() if kind == "variants" else _damaged()
    for (name, data), got in zip(cases.items(), _native(variant, cases, tmp_path), strict=True):
        want = _python(data)
        assert want is not None or kind == "damaged", f"{name}: Python cannot decode the test's own PNG"
        if want is None:
            assert got["error"].startswith("cannot read image: OpenCV cannot decode it"), f"{name}: {got}"
        else:
            assert got["error"] == "", f"{name}: {got['error']}"
            np.testing.assert_array_equal(got["pixels"], want, err_msg=name)
