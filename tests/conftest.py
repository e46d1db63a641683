"""Fixtures shared by every test package."""

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from npgmf_edge.config import get_preset
from npgmf_edge.data import AnomalyDataset, load_dataset
from npgmf_edge.data.synthetic import SyntheticConfig, generate_dataset

# Small enough to generate in well under a second; every logical and structural defect type appears once.
SMALL_LOCO = SyntheticConfig(
    image_size=64, n_train=10, n_validation=4, n_test_good=4, n_logical=4, n_structural=3
)


@pytest.fixture(scope="session")
def loco_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The category folder of a small generated MVTec LOCO AD dataset (64 px; 10/4/4/4/3 images).

    Session-scoped and shared: tests must not modify it (copy it with shutil.copytree first).
    `load_dataset(loco_dataset_dir)` reads it.
    """
    out = tmp_path_factory.mktemp("loco") / "data"
    summary = generate_dataset(out, SMALL_LOCO)
    return Path(summary["dataset"])


# A trained tiny run on the default `make-data` set and its bundles, shared by the export and runtime tests.
# Two epochs, the tiny preset's ImageNet EfficientNet-Lite0 and a random CLIP prior (chosen explicitly):
# they pin the mechanics of export and runtime (parity with torch, precision costs on real features, file
# contracts), not detection quality. Imports are local: collecting tests stays cheap.


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnomalyDataset]:
    from npgmf_edge.training.run import train_run

    root = tmp_path_factory.mktemp("tiny_run")
    generate_dataset(root / "data", SyntheticConfig(seed=0))
    dataset = load_dataset(root / "data")
    cfg = get_preset("tiny")
    cfg.weights.random_clip = True  # the encoder is the preset's ImageNet EfficientNet-Lite0
    cfg.train.epochs = 2
    # Both branches in the fused map, as export, the self-test and the runtimes must carry them: `auto`
    # gives this 2-epoch logical branch no weight (it finds the pseudo-anomalies no better than fusion
    # without it), and a logical branch at weight 0 would let a drifting logical graph pass unseen.
    cfg.fusion.mode, cfg.fusion.weight_structural, cfg.fusion.weight_logical = "fixed", 1.0, 1.0
    train_run(dataset, cfg, root / "run", branch="all")
    return root / "run", dataset


@pytest.fixture(scope="session")
def faiss_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + fp16 + int8 graphs, kNN by FAISS in the runtime."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "faiss"
    export_bundle(
        tiny_run[0], out, ExportOptions(precisions=("fp32", "fp16", "int8"), knn="faiss", tensorrt=False)
    )
    return out


@pytest.fixture(scope="session")
def graph_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + int8 single graphs with kNN, fusion and smoothing inside."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "graph"
    export_bundle(tiny_run[0], out, ExportOptions(precisions=("fp32", "int8"), knn="graph", tensorrt=False))
    return out


@pytest.fixture(scope="session")
def int8_search_bundle(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 single graph whose kNN runs its coreset GEMM in INT8 and re-ranks candidates exactly."""
    from npgmf_edge.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "int8_search"
    export_bundle(tiny_run[0], out, ExportOptions(knn="graph", knn_search="int8", tensorrt=False))
    return out


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run the console entry point in-process: cli("predict", ...) -> (exit code, stdout, stderr)."""
    import sys

    from npgmf_edge.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["npgmf-edge", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return int(exit_info.value.code or 0), captured.out, captured.err

    return run


# --- decode bombs (issue 24): headers claiming huge sizes, bodies of a few bytes -------------------------


def _small(extension: str, params: tuple[int, ...] = ()) -> bytes:
    import cv2
    import numpy as np

    ok, encoded = cv2.imencode(extension, np.full((8, 8, 3), 90, np.uint8), params)
    assert ok, extension
    return encoded.tobytes()


def image_bomb(fmt: str, width: int, height: int) -> bytes:
    """An image file of `fmt` whose header claims `width` x `height` pixels, with a body of a few bytes:
    small files of OpenCV's own encoders with their size fields rewritten, or headers written by hand
    (TIFF, PNM, PAM, HDR, Sun raster) as their specs lay them out."""
    body = bytes(64)
    if fmt == "gif":  # the repro: bytes 6:10 are the logical screen's unsigned 16-bit sides
        data = bytearray(_small(".gif"))
        data[6:10] = struct.pack("<HH", width, height)
        return bytes(data)
    if fmt == "png":  # IHDR's sides, and its CRC recomputed so libpng reads on
        data = bytearray(_small(".png"))
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        return bytes(data)
    if fmt == "jpeg":  # the baseline frame header (SOF0): precision, height, width
        data = bytearray(_small(".jpg"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
        return bytes(data)
    if fmt == "bmp":  # BITMAPINFOHEADER: signed 32-bit sides (a negative height is a top-down image)
        data = bytearray(_small(".bmp"))
        data[18:26] = struct.pack("<ii", width, -height)
        return bytes(data)
    if fmt == "webp":  # a lossy VP8 key frame: 14-bit sides (plus 2 scale bits)
        data = bytearray(_small(".webp", (64, 50)))  # cv2.IMWRITE_WEBP_QUALITY: 50, lossy
        assert data[12:16] == b"VP8 "
        data[26:30] = struct.pack("<HH", width, height)
        return bytes(data)
    if fmt == "tiff":  # one IFD: 8-bit grey, uncompressed, one strip that claims every row
        strip = 8 + 2 + 10 * 12 + 4  # the body follows the header, the IFD and its next-IFD offset
        # (tag, type: 3 SHORT / 4 LONG, value); a little-endian SHORT sits in the low half of the field
        entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, strip),
                   (277, 3, 1), (278, 4, height), (279, 4, width * height % 2**32), (284, 3, 1)]  # fmt: skip
        fields = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
        ifd = struct.pack("<H", len(entries)) + fields
        return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + body
    if fmt == "pnm":
        return f"P6\n{width} {height}\n255\n".encode() + body
    if fmt == "pam":
        header = f"P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n"
        return header.encode() + body
    if fmt == "hdr":
        return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode() + body
    if fmt == "sunras":  # magic, width, height, depth, length, type (standard), colour map type and length
        return struct.pack(">8I", 0x59A66A95, width, height, 24, 0, 1, 0, 0) + body
    raise ValueError(fmt)


@pytest.fixture
def craft_bomb() -> Callable[[str, int, int], bytes]:
    """`image_bomb`: craft_bomb("gif", 32768, 8000) -> the bytes of a 138-byte GIF claiming 262 MP."""
    return image_bomb


# A launcher that runs its arguments as a command and writes that command's peak RSS (KiB) to a file: the
# peak is taken from the launcher's own small process, because a child forked straight from pytest counts
# pytest's memory at the fork in its ru_maxrss (which survives exec).
PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_measuring_peak_rss(command: list[object], env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Run `command` to its end: (exit code, stdout and stderr, peak RSS in bytes). The environment is
    ours without OPENCV_IO_MAX_IMAGE_PIXELS (so the command's import of npgmf_edge sets it), plus `env`."""
    import os
    import subprocess
    import sys
    import tempfile

    base = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    with tempfile.TemporaryDirectory() as folder:
        peak = Path(folder) / "peak"
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak), *map(str, command)],
            capture_output=True, text=True, env={**base, **(env or {})}, timeout=600,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr, int(peak.read_text()) * 1024  # KiB on Linux


@pytest.fixture
def peak_rss() -> Callable[..., tuple[int, str, int]]:
    """`run_measuring_peak_rss`: peak_rss([sys.executable, "-m", "npgmf_edge", ...]) -> (code, output,
    peak bytes)."""
    return run_measuring_peak_rss
