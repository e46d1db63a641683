"""`npgmf-edge bench`: latency (p50 / p95 / p99 per image), throughput, memory and time per stage of a
bundle's backends, side by side in one run, with their ratios to the first (SPEC §6).

Each path is measured through the same `inspect(paths)` call a station makes, on the same images:
onnxruntime and tensorrt (the bundle through `runtime.Inspector`), and with --run the torch references
(`bench_reference`): torch (the run's eager FP32 network, FAISS, numpy fusion), torch-cuda (kNN and fusion
appended, FP16 autocast, replayed as a CUDA graph) and torch-cuda-eager (the same without the graph).
Absolute times depend on the machine and its load: compare paths by their ratios in one run. The report
describes the machine, so a number is never read without its context.

Example:
    >>> report = run_bench(Path("bundle"), BenchOptions(backends=("onnxruntime", "torch"), run=Path("run")))
    >>> report.rows[1]["p50_ratio"]       # torch's median latency / onnxruntime's
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from npgmf_edge.data import IMAGE_EXTENSIONS
from npgmf_edge.errors import ConfigError
from npgmf_edge.inspection import Detector
from npgmf_edge.progress import Log
from npgmf_edge.runtime.backends.registry import BACKENDS, tensorrt_unavailable_reason
from npgmf_edge.runtime.inspector import STAGES, Inspector
from npgmf_edge.runtime.manifest import read_manifest
from npgmf_edge.runtime.selftest import SelfTestResult

REFERENCE_PATHS = ("torch", "torch-cuda", "torch-cuda-eager")
SYNTHETIC_SOURCE_SIZE = (480, 640)  # a camera-like frame, decoded and resized like a real one
LIBRARIES = ("numpy", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "faiss-cpu",
             "faiss-gpu-cu12", "torch", "tensorrt", "cuda-python")  # fmt: skip


class InspectPath(Detector, Protocol):
    """What bench measures: a detector's `inspect(paths)`, with the seconds per stage of its last call and
    the bundle self-test it ran when it opened (None for the torch references)."""

    last_stages: dict[str, float]
    self_test: SelfTestResult | None


@dataclass
class BenchOptions:
    backends: tuple[str, ...] = ()  # default: every path available here
    precision: str | None = None
    batches: tuple[int, ...] = (1,)
    iters: int = 20
    warmup: int = 3
    threads: int | None = None
    images: Path | None = None
    run: Path | None = None
    device: str = "cpu"
    soak: int = 0

    def validate(self) -> None:
        known = (*BACKENDS, *REFERENCE_PATHS)
        unknown = [b for b in self.backends if b not in known]
        if unknown:
            raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; choose among {', '.join(known)}")
        if any(b in REFERENCE_PATHS for b in self.backends) and self.run is None:
            raise ConfigError("the torch reference paths need the run the bundle came from: add --run RUN")
        for name in ("iters", "warmup", "soak"):
            if getattr(self, name) < (1 if name == "iters" else 0):
                raise ConfigError(
                    f"--{name} must be >= {1 if name == 'iters' else 0}, got {getattr(self, name)}"
                )
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"--batch must be >= 1, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class BenchReport:
    """What `run_bench` measured: the machine, one row per path and batch size (latency percentiles,
    throughput, memory, ms per stage, ratio to the first path), the soak and the cost of opening each path."""

    machine: dict[str, Any]
    bundle: str
    precision: str
    rows: list[dict[str, Any]]
    soak: dict[str, Any] | None
    open: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def describe_machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": _gpu_name(), "python": platform.python_version(),
            "libraries": versions}  # fmt: skip


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def default_paths(run: Path | None, device: str) -> tuple[str, ...]:
    """Every path this machine can measure: the runtime's backends, and the torch references with --run."""
    paths = ["onnxruntime"]
    if device == "cuda" and tensorrt_unavailable_reason() is None:
        paths.append("tensorrt")
    if run is not None:
        paths.append("torch")
        if _gpu_name() is not None:
            paths.extend(("torch-cuda", "torch-cuda-eager"))
    return tuple(paths)


def bench_images(bundle_size: int, count: int, folder: Path | None, work: Path) -> list[Path]:
    """`count` image files: from `folder` (cycled), or synthetic camera-like frames written as PNG."""
    if folder is not None:
        found = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ConfigError(f"--images {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        return [found[i % len(found)] for i in range(count)]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(min(count, 16)):
        image = cv2.GaussianBlur(rng.integers(0, 256, (*SYNTHETIC_SOURCE_SIZE, 3), dtype=np.uint8), (5, 5), 0)
        path = work / f"frame_{i:02d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return [paths[i % len(paths)] for i in range(count)]


def open_path(name: str, bundle: Path, options: BenchOptions, precision: str) -> InspectPath:
    if name in BACKENDS:
        device = "cuda" if name == "tensorrt" else options.device
        return Inspector.open(
            bundle, backend=name, device=device, precision=precision, threads=options.threads
        )
    from npgmf_edge.bench_reference import TorchCudaPath, TorchPath

    manifest = read_manifest(bundle)
    if name == "torch":
        return TorchPath(options.run, manifest, precision, threads=options.threads)
    graphs = name == "torch-cuda"
    return TorchCudaPath(options.run, manifest, precision, max(options.batches), cuda_graphs=graphs)


def _percentiles(per_image_ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(per_image_ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def measure(path: InspectPath, images: list[Path], batch: int, iters: int, warmup: int) -> dict[str, Any]:
    """Time `iters` calls of `path.inspect` on batches of `batch` images (after `warmup` calls)."""
    per_image_ms, stage_sums = [], dict.fromkeys(STAGES, 0.0)
    started = 0.0
    for i in range(warmup + iters):
        chunk = [images[(i * batch + k) % len(images)] for k in range(batch)]
        if i == warmup:
            started = time.perf_counter()
        tick = time.perf_counter()
        results = path.inspect(chunk)
        elapsed = time.perf_counter() - tick
        bad = [r.problem for r in results if r.problem is not None]
        if bad:
            raise ConfigError(f"bench: an image gave no verdict ({bad[0]})")
        if i >= warmup:
            per_image_ms.append(1000 * elapsed / batch)
            for stage, seconds in path.last_stages.items():
                stage_sums[stage] += seconds
    wall = time.perf_counter() - started
    return {
        **_percentiles(per_image_ms),
        "throughput_images_per_s": iters * batch / wall,
        "stages_ms_per_image": {s: 1000 * v / (iters * batch) for s, v in stage_sums.items()},
    }


def run_bench(bundle: Path, options: BenchOptions, log: Log | None = None) -> BenchReport:
    """Measure every requested path and batch size on one set of images; see the module docstring."""
    options.validate()
    log = log or (lambda message: None)
    manifest = read_manifest(bundle)
    largest = max(options.batches)
    if largest > manifest.max_batch:
        raise ConfigError(
            f"--batch {largest} is above the bundle's max batch of {manifest.max_batch} (the most its graphs "
            "take in one call); bench batches up to it, or re-export with a larger --max-batch"
        )
    precision = options.precision or manifest.precisions[0]
    paths = options.backends or default_paths(options.run, options.device)
    report = BenchReport(describe_machine(), str(bundle), precision, rows=[], soak=None, open={})
    with tempfile.TemporaryDirectory(prefix="npgmf-bench-") as work:
        count = max(max(options.batches) * 4, options.soak and 64)
        images = bench_images(manifest.image_size, count, options.images, Path(work))
        for name in paths:
            tick = time.perf_counter()
            path = open_path(name, Path(bundle), options, precision)
            report.open[name] = _open_cost(path, time.perf_counter() - tick)
            try:
                for batch in options.batches:
                    log(f"{name}: batch {batch}, {options.warmup} warm-up + {options.iters} timed calls")
                    row = {
                        "backend": name,
                        "batch": batch,
                        **measure(path, images, batch, options.iters, options.warmup),
                    }
                    row["rss_mb"] = rss_mb()
                    row["peak_rss_mb"] = peak_rss_mb()
                    row.update(_gpu_memory(name))
                    report.rows.append(row)
                if options.soak and name == paths[0]:
                    report.soak = soak(path, images, options.soak, log)
            finally:
                path.close()
    _add_ratios(report.rows)
    return report


def _gpu_memory(name: str) -> dict[str, float]:
    if not name.startswith("torch-cuda"):
        return {}
    import torch

    return {"gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's median latency over the first path's at the same batch size."""
    first: dict[int, float] = {}
    for row in rows:
        base = first.setdefault(row["batch"], row["p50_ms"])
        row["p50_ratio"] = row["p50_ms"] / base


def soak(path: InspectPath, images: list[Path], count: int, log: Log) -> dict[str, Any]:
    """`count` images one at a time through one path: resident memory at the start, half way and the end.

    The growth over the second half is the plateau check (below 1 MiB over 50,000 images on the demo
    bundle): the first half includes the allocators' warm-up, a leak shows in both."""
    path.inspect(images[:1])
    start, samples = rss_mb(), []
    middle = start
    for i in range(count):
        path.inspect([images[i % len(images)]])
        if i == (count - 1) // 2:
            middle = rss_mb()
        if i % max(1, count // 20) == 0:
            samples.append(rss_mb())
            log(f"soak: {i}/{count} images, RSS {samples[-1]:.1f} MiB")
    end = rss_mb()
    return {"images": count, "rss_start_mb": start, "rss_middle_mb": middle, "rss_end_mb": end,
            "growth_mb": end - start, "second_half_growth_mb": end - middle,
            "rss_samples_mb": samples}  # fmt: skip


def _open_cost(path: InspectPath, seconds: float) -> dict[str, Any]:
    """What opening a path cost once: all of it, and the bundle self-test's share (runtime paths)."""
    test = path.self_test
    return {
        "seconds": round(seconds, 4),
        "self_test_seconds": None if test is None else round(test.seconds, 4),
        "self_test_images": None if test is None else test.images,
    }


def format_bench_table(report: BenchReport) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores); GPU: {m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        f"bundle {report.bundle} ({report.precision}); ms per image; ratio = p50 / first path's p50",
        f"{'backend':<17}{'batch':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'img/s':>8}{'ratio':>7}{'RSS MiB':>9}  "
        + " ".join(f"{s:>7}" for s in STAGES),
    ]
    for r in report.rows:
        stages = " ".join(f"{r['stages_ms_per_image'][s]:7.2f}" for s in STAGES)
        lines.append(
            f"{r['backend']:<17}{r['batch']:>5}{r['p50_ms']:9.2f}{r['p95_ms']:9.2f}{r['p99_ms']:9.2f}"
            f"{r['throughput_images_per_s']:8.1f}{r['p50_ratio']:7.2f}{r['rss_mb']:9.0f}  {stages}"
        )
    for name, cost in report.open.items():
        test = cost["self_test_seconds"]
        share = f", of which the self-test ({cost['self_test_images']} images) {test:.3f} s" if test else ""
        lines.append(f"open {name}: {cost['seconds']:.3f} s{share}")
    if report.soak:
        s = report.soak
        lines.append(
            f"soak: {s['images']} images, RSS {s['rss_start_mb']:.1f} -> {s['rss_middle_mb']:.1f} -> "
            f"{s['rss_end_mb']:.1f} MiB ({s['growth_mb']:+.1f}; "
            f"second half {s['second_half_growth_mb']:+.2f})"
        )
    return "\n".join(lines)
