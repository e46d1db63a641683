"""A client for `npgmf-edge serve`: one image per request over HTTP or gRPC (tritonclient), typed results.

One image per request is what a station sends; the server's dynamic batcher forms the batches. Only the
scalar outputs are asked for unless `with_map`, so the map costs nothing when it is not wanted.

Example:
    >>> with ServeClient("localhost:8001", protocol="grpc") as client:
    ...     result = client.inspect_bytes(Path("part.png").read_bytes())
    >>> result.verdict, result.score, result.error
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npgmf_edge.errors import ServeError
from npgmf_edge.inspection import Closing
from npgmf_edge.serve.model import (
    DEFAULT_MODEL,
    ENCODED_INPUT,
    MAP_OUTPUT,
    RAW_INPUT,
    RAW_SUFFIX,
    SCALAR_OUTPUTS,
    SIZE_INPUT,
)

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class ServeResult:
    """What the server answered for one image; `error` is None when it gave a verdict."""

    score: float
    verdict: str
    threshold: float
    precision: str
    error: str | None
    anomaly_map: np.ndarray | None = None


def split_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """ "grpc://host:8001", "http://host:8000" or "host:port" (+ protocol) -> (protocol, "host:port")."""
    scheme, sep, rest = url.partition("://")
    if sep:
        if protocol is not None and protocol != scheme:
            raise ServeError(f"URL {url} says {scheme} but --protocol says {protocol}; give one of them")
        protocol, url = scheme, rest
    protocol = protocol or "http"
    if protocol not in PROTOCOLS:
        raise ServeError(f"unknown protocol {protocol!r} in {url}; use http or grpc")
    return protocol, url.rstrip("/")


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's own exception for a connection the server closed (geventhttpclient)."""
    try:
        from geventhttpclient.response import HTTPParseError
    except ImportError:
        return ()
    return (HTTPParseError,)


class ServeClient(Closing):
    """tritonclient's HTTP or gRPC client for the two models `serve` binds. Not thread-safe: one per
    thread (the load test gives each of its workers its own)."""

    def __init__(
        self, url: str, protocol: str | None = None, model: str = DEFAULT_MODEL, timeout_s: float = 60.0
    ) -> None:
        self.protocol, self.url = split_url(url, protocol)
        self.model = model
        if self.protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(self.url)
        self._module = module
        self._timeout_s = timeout_s

    def ready(self) -> bool:
        """Triton's readiness (GET /v2/health/ready) and both models' readiness; False when unreachable."""
        from tritonclient.utils import InferenceServerException

        try:
            return bool(
                self._client.is_server_ready()
                and self._client.is_model_ready(self.model)
                and self._client.is_model_ready(self.model + RAW_SUFFIX)
            )
        except (InferenceServerException, OSError, ConnectionError):
            return False

    def inspect_bytes(self, data: bytes, with_map: bool = False) -> ServeResult:
        """Inspect one encoded image (PNG, JPEG, ... file bytes); the server decodes it."""
        blob = np.array([[data]], dtype=object)
        item = self._module.InferInput(ENCODED_INPUT, list(blob.shape), "BYTES")
        item.set_data_from_numpy(blob)
        return self._infer(self.model, [item], with_map)

    def inspect_pixels(self, image: np.ndarray, with_map: bool = False) -> ServeResult:
        """Inspect one (H, W, 3) uint8 RGB image decoded here (the server skips decoding). Sent as the raw
        model's contract says (model.py): its bytes row by row as `pixels`, its shape as `size`."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ServeError(f"expected RGB uint8 pixels (H, W, 3), got {image.dtype} {image.shape}")
        blob = np.array([[np.ascontiguousarray(image).tobytes()]], dtype=object)
        pixels = self._module.InferInput(RAW_INPUT, [1, 1], "BYTES")
        pixels.set_data_from_numpy(blob)
        size = self._module.InferInput(SIZE_INPUT, [1, 3], "INT32")
        size.set_data_from_numpy(np.array([image.shape], dtype=np.int32))
        return self._infer(self.model + RAW_SUFFIX, [pixels, size], with_map)

    def inspect_path(self, path: Path, with_map: bool = False) -> ServeResult:
        return self.inspect_bytes(Path(path).read_bytes(), with_map)

    def _infer(self, model: str, inputs: list, with_map: bool) -> ServeResult:
        from tritonclient.utils import InferenceServerException

        names = [*SCALAR_OUTPUTS, MAP_OUTPUT] if with_map else list(SCALAR_OUTPUTS)
        outputs = [self._module.InferRequestedOutput(name) for name in names]
        try:
            if self.protocol == "grpc":
                response = self._client.infer(model, inputs, outputs=outputs, client_timeout=self._timeout_s)
            else:
                response = self._client.infer(model, inputs, outputs=outputs)
        except (InferenceServerException, OSError, *_transport_errors()) as exc:
            reason = str(exc) or type(exc).__name__
            raise ServeError(f"{self.protocol}://{self.url} model {model}: {reason}") from exc
        error = response.as_numpy("error")[0, 0].decode()
        return ServeResult(
            score=float(response.as_numpy("score")[0, 0]),
            verdict=response.as_numpy("verdict")[0, 0].decode(),
            threshold=float(response.as_numpy("threshold")[0, 0]),
            precision=response.as_numpy("precision")[0, 0].decode(),
            error=error or None,
            anomaly_map=response.as_numpy(MAP_OUTPUT)[0] if with_map else None,
        )

    def close(self) -> None:
        self._client.close()
