"""Native TensorRT path: build an engine from a bundle's ONNX graph, check it fits this machine, run it.

Loaders (as Polygraphy's `EngineFromPath`): `build_engine` compiles, `engine_for_bundle` picks the bundle's
engine or rebuilds and caches one for this station, `engine_from_path` deserialises and checks it against
the manifest. The runner (`TensorRTBackend`) takes that ready engine, owns its context, stream and buffers
(allocated once, for the max batch) and releases them on `close`.

The only module that imports `tensorrt` and cuda-python, inside functions, so importing it costs nothing
where they are absent. docs/DEPLOY.md ("TensorRT engines") says why: strongly typed networks (no precision
flags, the same on TensorRT 10 and 11), TF32 off for FP32, cuda-python rather than pycuda, engines named
and checked by TensorRT version and compute capability.

Example:
    >>> facts = build_engine(onnx, bundle / name, input_name="pixels", input_shape=(3, 256, 256),
    ...                      max_batch=8, precision="fp16", onnx_sha256=sha,
    ...                      timing_cache_path=bundle / "timing.cache")
    >>> with TensorRTBackend(engine_from_path(bundle / name, spec), spec) as backend:
    ...     outputs = backend.infer(pixels)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from npgmf_edge.errors import BundleError
from npgmf_edge.fileio import atomic_write
from npgmf_edge.runtime.backends.base import Backend, BackendError, GraphSpec
from npgmf_edge.runtime.manifest import PRECISIONS, TIMING_CACHE, Manifest

log = logging.getLogger(__name__)

ENGINE_STEM = "model"
ENGINE_SUFFIX = ".engine"
SHA_PREFIX_CHARS = 12  # of the ONNX file's sha256 in an engine file name: unique within any bundle
# Caps the builder's tactic scratch memory: leaves room for the application on 8 GB Jetsons; the bundle's
# graphs at their max batch need far less. TensorRT's own default is the whole device memory.
DEFAULT_WORKSPACE_BYTES = 1 << 30
STRONG_TYPING_BY_DEFAULT_MAJOR = 11  # TensorRT major version from which every network is strongly typed
# The batch the builder times its kernels at: a station inspects one part per trigger (see `profile_shapes`).
OPT_BATCH = 1
INSTALL_HINT = (
    "pip install 'npgmf-edge[tensorrt-cu12]' (CUDA 12 driver) or 'npgmf-edge[tensorrt-cu13]' (CUDA 13) on "
    "a machine with an NVIDIA GPU and driver; on a Jetson, TensorRT comes with JetPack (docs/DEPLOY.md)"
)
REBUILD_HINT = "rebuild the engine on this machine (build_engine, or export the bundle again here)"
REEXPORT_HINT = "the engine does not belong to this bundle's graph; rebuild it from the bundle's ONNX"

# Engine facts that must be equal for an engine to run here, with their wording in messages.
_MACHINE_FACTS = {"tensorrt_version": "TensorRT version", "compute_capability": "compute capability"}
_GRAPH_FACTS = {
    "precision": "precision",
    "onnx_sha256": "ONNX sha256",
    "max_batch": "max batch",
    "input_shape": "input shape",
}


def _import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or BackendError saying why it cannot be used."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise BackendError(f"TensorRT cannot be imported ({exc}); {INSTALL_HINT}") from exc
    return tensorrt


def _import_cudart() -> ModuleType:
    """cuda-python's runtime API module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6.1)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6.1 has only the old layout
    return cudart


def _cuda(call: Callable[..., tuple[Any, ...]], *args: Any) -> Any:
    """Run one cuda-python call (`(error, value)` or `(error,)`): its value, or BackendError naming it."""
    err, *values = call(*args)
    if int(err) != 0:  # cudaSuccess is 0 in every CUDA version
        name = getattr(call, "__name__", repr(call))
        _, err_name = _import_cudart().cudaGetErrorName(err)
        raise BackendError(f"tensorrt: CUDA call {name} failed with {err_name.decode(errors='replace')}")
    return values[0] if values else None


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and cuda-python import and a CUDA device exists, else why not (one line)."""
    try:
        _import_tensorrt()
    except BackendError as exc:
        return str(exc)
    try:
        cudart = _import_cudart()
    except ImportError as exc:
        return f"cuda-python is not installed ({exc}); {INSTALL_HINT}"
    try:
        count = _cuda(cudart.cudaGetDeviceCount)
    except BackendError as exc:
        return f"no usable CUDA device: {exc}"
    return None if count > 0 else "no CUDA device found"


def device_facts() -> dict[str, str]:
    """This machine's TensorRT version, GPU name and compute capability ("8.9") of the current device."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendError(reason)
    trt = _import_tensorrt()
    cudart = _import_cudart()
    props = _cuda(cudart.cudaGetDeviceProperties, _cuda(cudart.cudaGetDevice))
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": props.name.split(b"\0", 1)[0].decode(errors="replace").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
    }


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def engine_file_name(precision: str, onnx_sha256: str, facts: dict[str, Any]) -> str:
    """`model.<precision>.trt<version>.sm<cc>.<sha12>.engine`, keyed by everything an engine depends on:
    ("fp16", "3fa2...", {"tensorrt_version": "10.13.3.9", "compute_capability": "8.9"}) ->
    "model.fp16.trt10.13.3.9.sm89.3fa2....engine"."""
    _check_precision(precision)
    if not re.fullmatch(f"[0-9a-f]{{{SHA_PREFIX_CHARS},}}", onnx_sha256):
        raise ValueError(f"onnx_sha256 must be a lowercase hex digest, got {onnx_sha256!r}")
    capability = str(facts["compute_capability"])
    if not re.fullmatch(r"\d+\.\d+", capability):
        raise ValueError(f"compute capability must look like '8.9', got {capability!r}")
    version = str(facts["tensorrt_version"])
    return (
        f"{ENGINE_STEM}.{precision}.trt{version}.sm{capability.replace('.', '')}."
        f"{onnx_sha256[:SHA_PREFIX_CHARS]}{ENGINE_SUFFIX}"
    )


def _engine_subject(recorded: dict[str, Any]) -> str:
    return f"TensorRT engine {recorded['file']}" if recorded.get("file") else "The TensorRT engine"


def _comparable(key: str, value: Any) -> Any:
    """A fact in the form it is compared in (JSON turns the input shape tuple into a list)."""
    return tuple(int(v) for v in value) if key == "input_shape" and value is not None else value


def _differences(
    recorded: dict[str, Any], current: dict[str, Any], labels: dict[str, str], where: str
) -> list[str]:
    """'<label> <recorded> (engine) vs <current> (<where>)' for each fact in `labels` that differs."""
    found = []
    for key, label in labels.items():
        old, new = _comparable(key, recorded.get(key)), _comparable(key, current.get(key))
        if old != new:
            found.append(f"{label} {old if old is not None else 'not recorded'} (engine) vs {new} ({where})")
    return found


def engine_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A sentence saying why the engine recorded in a manifest (`build_engine`'s facts) cannot run with
    `current` (`device_facts()` plus the bundle's graph facts), or None if it can. TensorRT version and
    compute capability must match exactly (plans are not portable across either), the graph facts too.
    Another GPU name of the same compute capability is no mismatch: TensorRT loads such a plan, so a fleet
    can share one engine; not guaranteed (TensorRT issue #2900), so callers log `engine_warning`."""
    machine = _differences(recorded, current, _MACHINE_FACTS, "this machine")
    graph = _differences(recorded, current, _GRAPH_FACTS, "bundle")
    if not machine and not graph:
        return None
    hints = ([REBUILD_HINT] if machine else []) + ([REEXPORT_HINT] if graph else [])
    return f"{_engine_subject(recorded)} does not fit: {'; '.join(machine + graph)}; {' and '.join(hints)}."


def engine_warning(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A note to log when a compatible engine was built on another GPU model (see `engine_mismatch`)."""
    old, new = recorded.get("gpu_name"), current.get("gpu_name")
    if old is None or new is None or old == new:
        return None
    return (
        f"{_engine_subject(recorded)} was built on {old}, this machine has {new} (same "
        f"compute capability {current.get('compute_capability')}): it should run, possibly slower; "
        f"{REBUILD_HINT} if inference fails or is slow."
    )


@functools.cache
def _trt_logger() -> Any:
    """One TensorRT logger for the process (TensorRT expects a single logger), warnings and errors only."""
    trt = _import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def _network_flags(trt: ModuleType) -> int:
    """`create_network` flags for a strongly typed network (implicit, and the flag deprecated, from 11)."""
    if int(trt.__version__.split(".")[0]) >= STRONG_TYPING_BY_DEFAULT_MAJOR:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse_onnx(trt: ModuleType, builder: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser): a strongly typed network parsed from `onnx_path`; BundleError lists parser errors.
    The parser owns weights the network refers to until the build is done."""
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, _trt_logger())
    parsed = parser.parse_from_file(str(onnx_path))  # from the file, so external weights resolve
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not parsed or errors:
        details = "; ".join(errors) or "no details from the parser"
        raise BundleError(
            f"TensorRT cannot parse {onnx_path}: {details}. Export the graph again with npgmf_edge.export "
            "(opset 17, dynamic batch axis only)."
        )
    return network, parser


def _check_network_input(
    network: Any, onnx_path: Path, input_name: str, input_shape: tuple[int, ...]
) -> None:
    """BundleError unless the graph's input is `input_name` of shape (dynamic batch, *input_shape)."""
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise BundleError(f"ONNX graph {onnx_path} has inputs {sorted(inputs)}, not {input_name!r}")
    shape = inputs[input_name]
    if shape[0] != -1 or shape[1:] != tuple(input_shape):
        raise BundleError(
            f"ONNX graph {onnx_path} input {input_name!r} has shape {shape}, expected (-1, "
            f"{', '.join(map(str, input_shape))}) with a dynamic batch axis; export it again"
        )


def profile_shapes(
    input_shape: tuple[int, ...], max_batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the engine's one profile: batch 1, `OPT_BATCH` and `max_batch`.
    Kernels are timed at the opt shape, a station's batch of 1 (docs/DEPLOY.md); larger batches still run.
    Example: ((3, 256, 256), 8) -> ((1, 3, 256, 256), (1, 3, 256, 256), (8, 3, 256, 256)).
    """
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input shape must be three positive sizes (3, S, S), got {tuple(input_shape)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    shape = tuple(int(v) for v in input_shape)
    return (1, *shape), (min(OPT_BATCH, max_batch), *shape), (max_batch, *shape)


def _attach_timing_cache(config: Any, path: Path) -> bool:
    """Give the builder the timing cache stored at `path` (True), or a fresh one (False)."""
    if path.is_file():
        cache = config.create_timing_cache(path.read_bytes())
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        log.warning("timing cache %s is from another TensorRT version or GPU; starting a new one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise BackendError("tensorrt: could not attach an empty timing cache to the builder")
    return False


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    input_name: str,
    input_shape: tuple[int, int, int],
    max_batch: int,
    precision: str,
    onnx_sha256: str,
    timing_cache_path: Path,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> dict[str, Any]:
    """Compile `onnx_path` into a TensorRT engine at `engine_path` (one profile: `profile_shapes`); returns
    the facts for the manifest. The timing cache is loaded when it exists (rebuilds skip tactic timing) and
    saved back; both files are written atomically. `precision` is recorded as given: a strongly typed
    build takes it from the graph."""
    onnx_path, engine_path, timing_cache_path = Path(onnx_path), Path(engine_path), Path(timing_cache_path)
    _check_precision(precision)
    low, opt, high = profile_shapes(input_shape, max_batch)
    if not onnx_path.is_file():
        raise BundleError(f"ONNX graph {onnx_path} is missing; export the bundle again")
    facts = device_facts()
    trt = _import_tensorrt()
    builder = trt.Builder(_trt_logger())
    network, _parser = _parse_onnx(trt, builder, onnx_path)
    _check_network_input(network, onnx_path, input_name, input_shape)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, low, opt, high)
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, timing_cache_path)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"tensorrt: building an engine from {onnx_path} failed (see the TensorRT messages above); "
            f"a larger workspace than {workspace_bytes} bytes or a smaller max batch may help"
        )
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(serialized))
    timing_cache = config.get_timing_cache()
    atomic_write(timing_cache_path, lambda tmp: tmp.write_bytes(timing_cache.serialize()))
    log.info("built %s in %.1f s", engine_path, time.perf_counter() - start)
    return {
        "file": engine_path.name,
        **facts,
        "precision": precision,
        "onnx_sha256": onnx_sha256,
        "max_batch": max_batch,
        "input_shape": [int(v) for v in input_shape],
    }


def engine_for_bundle(manifest: Manifest, precision: str) -> Path:
    """The bundle's engine for `precision` when it was built for this GPU and TensorRT version; else an
    engine rebuilt here from the bundle's ONNX (kept beside it under a name keyed by GPU, TensorRT version
    and ONNX hash, so the next start reuses it). Refused with the reason when TensorRT is missing."""
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BundleError(f"cannot run {manifest.root} with TensorRT: {reason}; use --backend onnxruntime")
    spec = manifest.graphs[precision]
    onnx_sha = manifest.raw["files"][spec.file]
    current = {
        **device_facts(),
        "precision": precision,
        "onnx_sha256": onnx_sha,
        "max_batch": manifest.max_batch,
        "input_shape": list(spec.input_shape),
    }
    recorded = manifest.engines.get(precision)
    mismatch = "no engine was built at export" if recorded is None else engine_mismatch(recorded, current)
    if mismatch is None:
        note = engine_warning(recorded, current)
        if note:
            log.warning(note)
        return manifest.root / recorded["file"]
    engine = manifest.root / engine_file_name(precision, onnx_sha, current)
    if not engine.is_file():
        log.warning("%s; building a TensorRT engine for this station: %s", mismatch, engine)
        try:
            build_engine(
                manifest.root / spec.file,
                engine,
                input_name=spec.input_name,
                input_shape=spec.input_shape,
                max_batch=manifest.max_batch,
                precision=precision,
                onnx_sha256=onnx_sha,
                timing_cache_path=manifest.root / TIMING_CACHE,
            )
        except OSError as exc:
            raise BundleError(
                f"{mismatch}; rebuilding it in {manifest.root} failed ({exc}); make the bundle writable, "
                f"or rebuild with `npgmf-edge export RUN --precision {precision} --tensorrt` on this station"
            ) from exc
    return engine


@dataclass(frozen=True)
class TrtEngine:
    """A deserialised engine checked against its `GraphSpec`, with the runtime that made it."""

    path: Path
    runtime: Any
    engine: Any


def engine_from_path(engine_path: Path, spec: GraphSpec) -> TrtEngine:
    """Deserialise `engine_path` and check its inputs, outputs and batch range against `spec`."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise BundleError(f"TensorRT engine {engine_path} is missing; {REBUILD_HINT}")
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendError(reason)
    trt = _import_tensorrt()
    runtime = trt.Runtime(_trt_logger())
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise BundleError(
            f"TensorRT {trt.__version__} cannot load engine {engine_path} (built by another TensorRT "
            f"version or for another GPU, or damaged); {REBUILD_HINT}"
        )
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if inputs != [spec.input_name]:
        raise BundleError(f"engine {engine_path} has inputs {inputs}, the manifest says [{spec.input_name}]")
    if spec.outputs and set(spec.outputs) != set(outputs):
        raise BundleError(
            f"engine {engine_path} has outputs {sorted(outputs)}, the manifest says "
            f"{sorted(spec.outputs)}; {REBUILD_HINT}"
        )
    max_shape = tuple(engine.get_tensor_profile_shape(spec.input_name, 0)[2])
    if max_shape[0] < spec.max_batch or max_shape[1:] != tuple(spec.input_shape):
        raise BundleError(
            f"engine {engine_path} accepts up to {max_shape}, the manifest needs "
            f"{(spec.max_batch, *spec.input_shape)}; {REBUILD_HINT}"
        )
    return TrtEngine(path=engine_path, runtime=runtime, engine=engine)


def open_bundle_graph(manifest: Manifest, precision: str, device: str, threads: int | None) -> Backend:
    """The registry's entry: this station's engine for the bundle's `precision` graph, in a runner (a
    TensorRT engine runs on the GPU whatever `device` says, on TensorRT's own threads)."""
    spec = manifest.graphs[precision]
    return TensorRTBackend(engine_from_path(engine_for_bundle(manifest, precision), spec), spec)


@dataclass(frozen=True)
class _Buffer:
    """One I/O tensor's pinned host and device memory, sized for the max batch."""

    dtype: np.dtype
    host: np.ndarray  # flat view of the pinned memory
    host_ptr: int
    device_ptr: int


class TensorRTBackend(Backend):
    """The runner: takes a checked engine (`engine_from_path`) and runs it with buffers allocated once for
    the bundle's max batch."""

    name = "tensorrt"

    def __init__(self, engine: TrtEngine, spec: GraphSpec) -> None:
        super().__init__(spec)
        self._runtime: Any = engine.runtime
        self._engine: Any = engine.engine
        self._context: Any = None
        self._stream: Any = None
        self._stream_handle = 0
        self._buffers: dict[str, _Buffer] = {}
        self._output_names: list[str] = []
        self._host_ptrs: list[int] = []
        self._device_ptrs: list[int] = []
        self._cudart = _import_cudart()
        self._facts = device_facts()
        try:
            self._open(_import_tensorrt(), engine.path)
        except BaseException:
            with contextlib.suppress(BackendError):  # keep the original error, not a clean-up failure
                self.close()
            raise

    def describe(self) -> str:
        facts = self._facts
        gpu = f"{facts['gpu_name']} (sm {facts['compute_capability']})"
        return f"TensorRT {facts['tensorrt_version']} on {gpu}"

    def _open(self, trt: ModuleType, engine_path: Path) -> None:
        """Create the context, stream and buffers for the checked engine."""
        spec, cudart, engine = self.spec, self._cudart, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._output_names = [n for n in names if n != spec.input_name]
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"tensorrt: no execution context for {engine_path} (out of GPU memory?)")
        if not self._context.set_input_shape(spec.input_name, (spec.max_batch, *spec.input_shape)):
            raise BackendError(f"tensorrt: engine {engine_path} rejects the max-batch input shape")
        self._stream = _cuda(cudart.cudaStreamCreate)
        self._stream_handle = _native_handle(self._stream)
        for name in names:
            self._buffers[name] = self._allocate(trt, engine_path, name)
            if not self._context.set_tensor_address(name, self._buffers[name].device_ptr):
                raise BackendError(f"tensorrt: set_tensor_address({name!r}) failed for {engine_path}")
        if self._buffers[spec.input_name].dtype.kind != "f":
            raise BundleError(f"engine {engine_path} input is not floating point; export it again")

    def _allocate(self, trt: ModuleType, engine_path: Path, name: str) -> _Buffer:
        """Pinned host + device memory for tensor `name` at the max-batch shape set on the context."""
        shape = tuple(self._context.get_tensor_shape(name))
        if min(shape, default=0) < 0:
            raise BundleError(f"engine {engine_path} output {name!r} has a data-dependent shape {shape}")
        try:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
        except TypeError as exc:
            raise BundleError(
                f"engine {engine_path} tensor {name!r} has a type numpy cannot hold; export the graph with "
                "float32 inputs and outputs (keep_io_types)"
            ) from exc
        nbytes = math.prod(shape) * dtype.itemsize
        host_ptr = _cuda(self._cudart.cudaMallocHost, nbytes)
        self._host_ptrs.append(host_ptr)
        device_ptr = _cuda(self._cudart.cudaMalloc, nbytes)
        self._device_ptrs.append(device_ptr)
        host = np.frombuffer((ctypes.c_ubyte * nbytes).from_address(host_ptr), dtype=dtype)
        return _Buffer(dtype=dtype, host=host, host_ptr=host_ptr, device_ptr=device_ptr)

    def _infer_impl(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        cudart, stream = self._cudart, self._stream
        name = self.spec.input_name
        if not self._context.set_input_shape(name, pixels.shape):
            raise BackendError(f"tensorrt: the engine rejects input shape {pixels.shape}")
        staged = self._buffers[name].host[: pixels.size]
        np.copyto(staged, pixels.reshape(-1), casting="same_kind")
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda(
            cudart.cudaMemcpyAsync,
            self._buffers[name].device_ptr,
            staged.ctypes.data,
            staged.nbytes,
            to_device,
            stream,
        )
        if not self._context.execute_async_v3(self._stream_handle):
            raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT messages above)")
        shapes = {out: tuple(self._context.get_tensor_shape(out)) for out in self._output_names}
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for out, shape in shapes.items():
            buffer = self._buffers[out]
            _cuda(
                cudart.cudaMemcpyAsync,
                buffer.host_ptr,
                buffer.device_ptr,
                math.prod(shape) * buffer.dtype.itemsize,
                to_host,
                stream,
            )
        _cuda(cudart.cudaStreamSynchronize, stream)
        return {
            out: self._buffers[out].host[: math.prod(shape)].reshape(shape).astype(np.float32)
            for out, shape in shapes.items()
        }

    def _close(self) -> None:
        """Release the context, engine, buffers and stream; raises the first CUDA failure."""
        self._context = self._engine = self._runtime = None  # TensorRT objects first, in this order
        self._buffers = {}
        failures: list[BackendError] = []

        def release(call: Callable[..., tuple[Any, ...]], *args: Any) -> None:
            try:
                _cuda(call, *args)
            except BackendError as exc:
                failures.append(exc)

        if self._stream is not None:
            release(self._cudart.cudaStreamSynchronize, self._stream)
        for ptr in self._device_ptrs:
            release(self._cudart.cudaFree, ptr)
        for ptr in self._host_ptrs:
            release(self._cudart.cudaFreeHost, ptr)
        if self._stream is not None:
            release(self._cudart.cudaStreamDestroy, self._stream)
        self._stream, self._device_ptrs, self._host_ptrs = None, [], []
        if failures:
            raise failures[0]


def _native_handle(stream: Any) -> int:
    """The integer handle of a cuda-python stream, for `execute_async_v3`."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # cuda-python < 12.9.1, where int() is the only way
        return int(stream)
    return int(get_cuda_native_handle(stream))
