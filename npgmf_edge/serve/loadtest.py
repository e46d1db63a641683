"""`npgmf-edge serve-bench`: N concurrent clients for S seconds, and every answer checked.

Each worker thread has its own client and sends one image per request, cycling from its own offset;
latencies are end to end. With a reference (`reference_results`: `Inspector.inspect` here, on the same
files) every answer is compared with the one for the image it was sent for (score within `rtol`, same
verdict, error where the reference has one): an answer swapped within a dynamic batch is a mismatch, a
request without an answer counts as lost.

Example:
    >>> reference = reference_results(Path("bundle"), images)
    >>> report = run_load("localhost:8001", images, LoadOptions(concurrency=16, protocol="grpc"), reference)
    >>> report["images_per_s"], report["mismatches"], report["lost"]
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npgmf_edge.errors import ServeError
from npgmf_edge.progress import Log
from npgmf_edge.serve.client import ServeClient, ServeResult, split_url
from npgmf_edge.serve.model import DEFAULT_MODEL

WARMUP_TIMEOUT_S = 120
SCORE_RTOL = 1e-5  # batch composition changes onnxruntime's summation order by a few float32 ulps


@dataclass(frozen=True)
class Expected:
    """What the in-process Inspector said about one image."""

    score: float
    verdict: str


@dataclass
class LoadOptions:
    """How hard and how long to load the server."""

    concurrency: int = 16
    duration_s: float = 20.0
    protocol: str | None = None
    raw: bool = False  # decode here and send RGB pixels to the raw model
    model: str = DEFAULT_MODEL
    warmup_requests: int = 2  # per worker, before the clock starts
    rtol: float = SCORE_RTOL

    def validate(self) -> None:
        if self.concurrency < 1 or self.duration_s <= 0 or self.warmup_requests < 0:
            raise ServeError("--concurrency must be >= 1 and --duration > 0")


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    answered: int = 0
    errors: int = 0
    mismatches: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def reference_results(bundle: Path, images: Sequence[Path], precision: str | None = None) -> list[Expected]:
    """`Inspector.inspect` in this process on the same files: the independent reference."""
    from npgmf_edge.runtime import Inspector

    with Inspector.open(Path(bundle), precision=precision) as inspector:
        return [Expected(r.score, r.verdict) for r in inspector.inspect(list(images))]


def compare(result: ServeResult, expected: Expected, rtol: float = SCORE_RTOL) -> str | None:
    """Why `result` differs from `expected`, or None when it matches."""
    if expected.verdict == "error" or result.verdict == "error":
        if expected.verdict == result.verdict:
            return None
        return f"verdict {result.verdict!r} ({result.error}), expected {expected.verdict!r}"
    if not math.isfinite(result.score) or abs(result.score - expected.score) > rtol * abs(expected.score):
        return f"score {result.score!r}, expected {expected.score!r}"
    if result.verdict != expected.verdict:
        return f"verdict {result.verdict!r}, expected {expected.verdict!r}"
    return None


def _payloads(images: Sequence[Path], raw: bool) -> list[bytes | np.ndarray | str]:
    """What each request sends: file bytes, or RGB pixels decoded here (an undecodable file keeps its
    error text and is sent as bytes, so the server still answers it)."""
    if not raw:
        return [Path(p).read_bytes() for p in images]
    from npgmf_edge.data import decode_inputs

    decoded = decode_inputs(list(images), max_pixels=None)
    return [Path(p).read_bytes() if isinstance(d, str) else d for p, d in zip(images, decoded, strict=True)]


def _send(client: ServeClient, payload: bytes | np.ndarray) -> ServeResult:
    if isinstance(payload, np.ndarray):
        return client.inspect_pixels(payload)
    return client.inspect_bytes(payload)


def _worker(
    url: str,
    payloads: list,
    names: list[str],
    reference: Sequence[Expected] | None,
    options: LoadOptions,
    offset: int,
    start: threading.Barrier,
    deadline: list[float],
    tally: _Tally,
    lock: threading.Lock,
) -> None:
    with ServeClient(url, options.protocol, options.model) as client:
        try:
            for k in range(options.warmup_requests):
                _send(client, payloads[(offset + k) % len(payloads)])
        except ServeError as exc:
            with lock:
                tally.lost.append(f"warm-up: {exc}")
            start.abort()  # the main thread stops waiting and reports this
            return
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        k = 0
        while time.perf_counter() < deadline[0]:
            index = (offset + k * options.concurrency) % len(payloads)
            k += 1
            tick = time.perf_counter()
            try:
                result = _send(client, payloads[index])
            except ServeError as exc:
                with lock:
                    tally.lost.append(f"{names[index]}: {exc}")
                continue
            elapsed_ms = (time.perf_counter() - tick) * 1000
            problem = compare(result, reference[index], options.rtol) if reference is not None else None
            with lock:
                tally.latencies_ms.append(elapsed_ms)
                tally.answered += 1
                tally.errors += result.verdict == "error"
                if problem is not None:
                    tally.mismatches.append(f"{names[index]}: {problem}")


def run_load(
    url: str,
    images: Sequence[Path],
    options: LoadOptions,
    reference: Sequence[Expected] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Load the server at `url` with `options.concurrency` clients for `options.duration_s` seconds."""
    options.validate()
    protocol = split_url(url, options.protocol)[0]
    if not images:
        raise ServeError("no images to send; give a folder with at least one image")
    log = log or (lambda message: None)
    payloads = _payloads(images, options.raw)
    names = [Path(p).name for p in images]
    tally, lock = _Tally(), threading.Lock()
    start = threading.Barrier(options.concurrency + 1)
    deadline = [math.inf]
    workers = [
        threading.Thread(
            target=_worker,
            args=(url, payloads, names, reference, options, k, start, deadline, tally, lock),
            daemon=True,
        )
        for k in range(options.concurrency)
    ]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout=WARMUP_TIMEOUT_S)
    except threading.BrokenBarrierError as exc:
        for worker in workers:
            worker.join()
        reason = tally.lost[0] if tally.lost else f"no answer within {WARMUP_TIMEOUT_S} s"
        raise ServeError(
            f"the clients could not warm up against {url} ({reason}); is the server ready?"
        ) from exc
    began = time.perf_counter()
    deadline[0] = began + options.duration_s
    log(f"{options.concurrency} clients sending to {url} for {options.duration_s:g} s")
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    latencies = np.array(tally.latencies_ms) if tally.latencies_ms else np.array([math.nan])
    return {
        "url": url,
        "protocol": protocol,
        "input": "raw pixels" if options.raw else "encoded bytes",
        "concurrency": options.concurrency,
        "seconds": round(elapsed, 3),
        "requests": tally.answered + len(tally.lost),
        "answered": tally.answered,
        "images_per_s": round(tally.answered / elapsed, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "errors": tally.errors,
        "checked": reference is not None,
        "mismatches": len(tally.mismatches),
        "lost": len(tally.lost),
        "problems": (tally.mismatches + tally.lost)[:10],
    }
