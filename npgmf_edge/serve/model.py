"""The batched infer function behind `npgmf-edge serve`: pure numpy, testable without Triton.

`InspectorModel` flattens the requests of a Triton batch into one `Inspector.inspect` call and splits the
results back, one response per request; a corrupt or oversized image gets verdict "error", a NaN score
and its `error` text, the rest of the batch is answered as usual. Two input kinds (docs/SERVE.md):
    ENCODED  "image"   BYTES [1]  file bytes; refused above max_pixels from the header, before decoding
    RAW      "pixels"  BYTES [1]  RGB uint8 pixels decoded by the client, row by row (H x W x 3 bytes)
             "size"    INT32 [3]  their shape (H, W, 3); checked against the byte count and max_pixels
Raw pixels travel as one BYTES element, not a UINT8 [H, W, 3] tensor: PyTriton's shared-memory store
cannot copy a tensor with a zero-length side (HTTP 500 in the stub), so an empty image reaches
`unpack_raw` and gets its own one-line error. Outputs per image: score, threshold, verdict, precision,
error and, only when requested, anomaly_map FP16 [-1, -1] at the image's own size.

Example:
    >>> model = InspectorModel(Inspector.open(Path("bundle")), max_pixels=16_000_000)
    >>> [response] = model.infer_encoded([{"image": np.array([[png_bytes]], dtype=object)}])
    >>> response["verdict"][0, 0], response["score"][0, 0]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from npgmf_edge.data import DEFAULT_MAX_PIXELS
from npgmf_edge.data.image_io import decode_image_bytes
from npgmf_edge.errors import DatasetError
from npgmf_edge.inspection import Inspection

DEFAULT_MODEL = "npgmf"  # the encoded-image model; the raw one is DEFAULT_MODEL + RAW_SUFFIX
RAW_SUFFIX = "_raw"
ENCODED_INPUT = "image"
RAW_INPUT = "pixels"
SIZE_INPUT = "size"
CHANNELS = 3  # the raw model takes RGB
MAP_OUTPUT = "anomaly_map"
SCALAR_OUTPUTS = ("score", "threshold", "verdict", "precision", "error")
OUTPUTS = (*SCALAR_OUTPUTS, MAP_OUTPUT)
DECODE_THREADS = 2  # cv2.imdecode releases the GIL: decode two images at once on a 2-core station


@dataclass(frozen=True)
class ServedImage:
    """One image of a request after decoding: RGB pixels, or why there are none."""

    pixels: np.ndarray | None
    error: str | None = None


def decode_encoded(blobs: Sequence[object], max_pixels: int | None, pool: ThreadPoolExecutor) -> list:
    """Encoded image bytes -> ServedImage each; `pool` decodes them side by side."""

    def one(blob: object) -> ServedImage:
        if not isinstance(blob, bytes | np.bytes_):
            return ServedImage(None, f"expected image file bytes, got {type(blob).__name__}")
        try:
            return ServedImage(decode_image_bytes(bytes(blob), max_pixels, "the image"))
        except (DatasetError, MemoryError, ValueError) as exc:
            return ServedImage(None, str(exc))

    return list(pool.map(one, blobs))


def unpack_raw(blobs: Sequence[object], sizes: np.ndarray, max_pixels: int | None) -> list[ServedImage]:
    """Raw RGB bytes with their (H, W, 3) sizes -> ServedImage each: an (H, W, 3) uint8 view of the bytes,
    or why not (refused above `max_pixels` like encoded images, before the bytes are looked at)."""
    served = []
    for blob, size in zip(blobs, np.asarray(sizes).reshape(-1, 3), strict=True):
        height, width, channels = (int(side) for side in size)
        if not isinstance(blob, bytes | np.bytes_):
            problem = f"expected the pixels as bytes, got {type(blob).__name__}"
        elif channels != CHANNELS or height < 0 or width < 0:
            problem = f"size must be (height, width, {CHANNELS}) for RGB, got ({height}, {width}, {channels})"
        elif min(height, width) < 1:
            problem = f"the image is {width}x{height} pixels: it has no pixels to inspect"
        elif max_pixels is not None and height * width > max_pixels:
            problem = (
                f"the image is {width}x{height} ({height * width:,} pixels), above the limit of "
                f"{max_pixels:,}; shrink it, or start the server with a larger --max-pixels"
            )
        elif len(blob) != height * width * channels:
            problem = (
                f"the pixels are {len(blob):,} bytes, but a {width}x{height} RGB image is "
                f"{height * width * channels:,} (height x width x 3 uint8, row by row)"
            )
        else:
            pixels = np.frombuffer(blob, dtype=np.uint8).reshape(height, width, channels)
            served.append(ServedImage(pixels))
            continue
        served.append(ServedImage(None, problem))
    return served


def _bytes_column(values: Sequence[str]) -> np.ndarray:
    return np.array([[value.encode()] for value in values], dtype=object).reshape(len(values), 1)


def response_arrays(results: Sequence[Inspection], precision: str, with_map: bool) -> dict[str, np.ndarray]:
    """One request's results as Triton output arrays (batch first). A non-finite score is never a verdict:
    `Inspection.verdict` is then "error" and `error` says why."""
    outputs = {
        "score": np.array([[r.score] for r in results], dtype=np.float32).reshape(len(results), 1),
        "threshold": np.array([[r.threshold] for r in results], dtype=np.float32).reshape(len(results), 1),
        "verdict": _bytes_column([r.verdict for r in results]),
        "precision": _bytes_column([precision] * len(results)),
        "error": _bytes_column([r.problem or "" for r in results]),
    }
    if with_map:
        outputs[MAP_OUTPUT] = stack_maps([r.anomaly_map for r in results])
    return outputs


def stack_maps(maps: Sequence[np.ndarray | None]) -> np.ndarray:
    """(N, H, W) float16: each map at its image's own size, NaN-padded to the largest of the request
    (one image per request, what `ServeClient` sends, is never padded); NaN for an image without a map."""
    height = max((m.shape[0] for m in maps if m is not None), default=1)
    width = max((m.shape[1] for m in maps if m is not None), default=1)
    stacked = np.full((len(maps), height, width), np.nan, dtype=np.float16)
    for row, anomaly_map in enumerate(maps):
        if anomaly_map is not None:
            stacked[row, : anomaly_map.shape[0], : anomaly_map.shape[1]] = anomaly_map
    return stacked


class InspectorModel:
    """Answers a dynamic batch of Triton requests with one `Inspector.inspect` call.

    `requests` are mappings of input name -> array (PyTriton's `Request` is one); `requested` gives, per
    request, the output names it asked for (None: all of them, Triton's default)."""

    def __init__(self, inspector, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.inspector = inspector
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
        self._busy_lock = threading.Lock()
        self._running = 0  # batches being answered now
        self._last_done = time.monotonic()

    def idle_seconds(self) -> float:
        """0 while a batch is being answered, else the seconds since the last one finished: how the
        server's drain knows the batches Triton had accepted are done (server._drain)."""
        with self._busy_lock:
            return 0.0 if self._running else time.monotonic() - self._last_done

    def infer_encoded(
        self, requests: Sequence[Mapping[str, np.ndarray]], requested: Sequence[Sequence[str] | None] = ()
    ) -> list[dict[str, np.ndarray]]:
        per_request = [np.asarray(request[ENCODED_INPUT], dtype=object).reshape(-1) for request in requests]
        blobs = [blob for request_blobs in per_request for blob in request_blobs]
        served = decode_encoded(blobs, self.max_pixels, self._pool)
        return self._answer(served, [len(blobs) for blobs in per_request], requested)

    def infer_raw(
        self, requests: Sequence[Mapping[str, np.ndarray]], requested: Sequence[Sequence[str] | None] = ()
    ) -> list[dict[str, np.ndarray]]:
        per_request = [np.asarray(request[RAW_INPUT], dtype=object).reshape(-1) for request in requests]
        blobs = [blob for request_blobs in per_request for blob in request_blobs]
        sizes = np.concatenate([np.asarray(request[SIZE_INPUT]).reshape(-1, 3) for request in requests])
        served = unpack_raw(blobs, sizes, self.max_pixels)
        return self._answer(served, [len(blobs) for blobs in per_request], requested)

    def _answer(
        self, served: list[ServedImage], counts: list[int], requested: Sequence[Sequence[str] | None]
    ) -> list[dict[str, np.ndarray]]:
        with self._busy_lock:
            self._running += 1
        try:
            return self._respond(served, counts, requested)
        finally:
            with self._busy_lock:
                self._running -= 1
                self._last_done = time.monotonic()

    def _respond(
        self, served: list[ServedImage], counts: list[int], requested: Sequence[Sequence[str] | None]
    ) -> list[dict[str, np.ndarray]]:
        good = [item.pixels for item in served if item.pixels is not None]
        inspected = iter(self.inspector.inspect(good) if good else [])
        threshold = self.inspector.calibration.threshold
        results = [
            next(inspected) if item.pixels is not None else Inspection.failed(threshold, item.error or "")
            for item in served
        ]
        responses, start = [], 0
        for k, count in enumerate(counts):
            names = requested[k] if k < len(requested) else None
            with_map = names is None or MAP_OUTPUT in names
            chunk = results[start : start + count]
            responses.append(response_arrays(chunk, self.inspector.precision, with_map))
            start += count
        return responses

    def close(self) -> None:
        self._pool.shutdown(wait=True)
