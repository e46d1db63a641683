"""The native TensorRT path.

Default suite (no TensorRT, no GPU): the pure functions against hand-written values, the lazy import, and
the build/run control flow against a stand-in `tensorrt` module and a stand-in cuda-python runtime whose
"device" memory is host memory, so pointer plumbing, buffer sizes, allocation counts and clean-up are
checked exactly. The stand-ins follow the TensorRT 10/11 and cuda-python signatures; that they match the
real libraries is what the `tensorrt`-marked tests at the end check on a machine that has them.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from npgmf_edge.errors import BundleError
from npgmf_edge.runtime.backends import tensorrt as trt_backend
from npgmf_edge.runtime.backends.base import BackendError, GraphSpec
from npgmf_edge.runtime.backends.tensorrt import (
    TensorRTBackend,
    build_engine,
    device_facts,
    engine_file_name,
    engine_from_path,
    engine_mismatch,
    engine_warning,
    profile_shapes,
    tensorrt_unavailable_reason,
)

MODULE_PATH = Path(trt_backend.__file__).resolve()
PACKAGE_DIR = MODULE_PATH.parents[2]
SHA = "3fa2b7c1d9e04f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
FACTS = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
RECORDED = {
    "file": "model.fp16.trt10.13.3.9.sm89.3fa2b7c1d9e0.engine",
    **FACTS,
    "precision": "fp16",
    "onnx_sha256": SHA,
    "max_batch": 8,
    "input_shape": [3, 256, 256],
}

# ---------------------------------------------------------------------------------------------- pure


def test_engine_file_name_is_keyed_by_version_capability_precision_and_hash() -> None:
    assert engine_file_name("fp16", SHA, FACTS) == "model.fp16.trt10.13.3.9.sm89.3fa2b7c1d9e0.engine"
    blackwell = {"tensorrt_version": "11.4.0.106", "gpu_name": "RTX PRO 6000", "compute_capability": "12.0"}
    assert engine_file_name("int8", SHA, blackwell) == "model.int8.trt11.4.0.106.sm120.3fa2b7c1d9e0.engine"


@pytest.mark.parametrize(
    ("precision", "sha", "capability"),
    [("bf16", SHA, "8.9"), ("fp16", "3FA2B7C1D9E0", "8.9"), ("fp16", "3fa2", "8.9"), ("fp16", SHA, "89")],
)
def test_engine_file_name_rejects_malformed_keys(precision: str, sha: str, capability: str) -> None:
    with pytest.raises(ValueError):
        engine_file_name(precision, sha, {**FACTS, "compute_capability": capability})


def test_engine_matches_itself_and_a_json_round_trip() -> None:
    current = {**FACTS, "precision": "fp16", "onnx_sha256": SHA, "max_batch": 8, "input_shape": (3, 256, 256)}
    assert engine_mismatch(RECORDED, current) is None
    assert engine_warning(RECORDED, current) is None


def test_engine_from_another_tensorrt_version_or_architecture_does_not_fit() -> None:
    current = {**RECORDED, "tensorrt_version": "11.4.0.106", "compute_capability": "8.6"}
    assert engine_mismatch(RECORDED, current) == (
        "TensorRT engine model.fp16.trt10.13.3.9.sm89.3fa2b7c1d9e0.engine does not fit: "
        "TensorRT version 10.13.3.9 (engine) vs 11.4.0.106 (this machine); "
        "compute capability 8.9 (engine) vs 8.6 (this machine); "
        "rebuild the engine on this machine (build_engine, or export the bundle again here)."
    )


def test_engine_of_another_graph_does_not_fit() -> None:
    current = {**RECORDED, "onnx_sha256": "0" * 64, "max_batch": 4, "input_shape": [3, 224, 224]}
    message = engine_mismatch(RECORDED, current)
    assert message is not None
    assert f"ONNX sha256 {SHA} (engine) vs {'0' * 64} (bundle)" in message
    assert "max batch 8 (engine) vs 4 (bundle)" in message
    assert "input shape (3, 256, 256) (engine) vs (3, 224, 224) (bundle)" in message
    assert "rebuild the engine on this machine" not in message
    assert "does not belong to this bundle's graph" in message


def test_engine_without_recorded_facts_does_not_fit() -> None:
    message = engine_mismatch({"file": "old.engine"}, RECORDED)
    assert message is not None
    assert message.startswith("TensorRT engine old.engine does not fit: TensorRT version not recorded")


def test_other_gpu_model_of_the_same_architecture_fits_with_a_warning() -> None:
    current = {**RECORDED, "gpu_name": "NVIDIA RTX 4000 Ada Generation"}
    assert engine_mismatch(RECORDED, current) is None
    note = engine_warning(RECORDED, current)
    assert note is not None
    assert "built on NVIDIA L4, this machine has NVIDIA RTX 4000 Ada Generation" in note
    assert "same compute capability 8.9" in note


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [
        (8, ((1, 3, 256, 256), (1, 3, 256, 256), (8, 3, 256, 256))),
        (1, ((1, 3, 256, 256), (1, 3, 256, 256), (1, 3, 256, 256))),
    ],
)
def test_profile_is_timed_at_batch_one_and_reaches_the_manifest_max_batch(max_batch, expected) -> None:
    assert profile_shapes((3, 256, 256), max_batch) == expected


@pytest.mark.parametrize(("shape", "max_batch"), [((3, 256, 256), 0), ((3, 256), 8), ((3, 0, 256), 8)])
def test_profile_rejects_an_empty_batch_range_or_a_malformed_input(shape, max_batch) -> None:
    with pytest.raises(ValueError):
        profile_shapes(shape, max_batch)


def test_importing_the_module_loads_neither_tensorrt_nor_cuda_python() -> None:
    code = (
        "import sys, npgmf_edge.runtime.backends.tensorrt; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'pycuda')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_other_module_imports_tensorrt_or_cuda_python() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(tensorrt|cuda|pycuda)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(PACKAGE_DIR))
        for path in PACKAGE_DIR.rglob("*.py")
        if path.resolve() != MODULE_PATH and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_unavailable_reason_names_tensorrt_when_it_cannot_be_imported(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    reason = tensorrt_unavailable_reason()
    assert reason is not None
    assert reason.startswith("TensorRT cannot be imported")
    assert "npgmf-edge[tensorrt-cu12]" in reason and "npgmf-edge[tensorrt-cu13]" in reason


def test_missing_engine_file_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"missing\.engine is missing; rebuild the engine"):
        _runner(tmp_path / "missing.engine", _spec())


def test_backend_without_tensorrt_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(BackendError, match="TensorRT cannot be imported"):
        _runner(engine, _spec())


def test_missing_onnx_file_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"gone\.onnx is missing"):
        build_engine(tmp_path / "gone.onnx", tmp_path / "m.engine", **_build_kwargs(tmp_path))


# --------------------------------------------------------------------------------------- stand-ins

C, H, W = 3, 4, 4
MAX_BATCH = 4
ENGINE_BYTES = b"serialized plan"


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class FakeCudart:
    """cuda-python's runtime module over host memory: every call returns (error, value...)."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.blocks: dict[int, Any] = {}  # address -> ctypes buffer, device and pinned alike
        self.allocations = 0
        self.copies: list[tuple[int, int]] = []  # (kind, bytes)
        self.streams_destroyed = 0
        self.failing: set[str] = set()

    def _ok(self, name: str, *values: Any) -> tuple[Any, ...]:
        if name in self.failing:
            return (CudaError.cudaErrorMemoryAllocation, *([None] * len(values)))
        return (CudaError.cudaSuccess, *values)

    def _alloc(self, name: str, nbytes: int) -> tuple[Any, ...]:
        if name in self.failing:
            return self._ok(name, None)
        block = ctypes.create_string_buffer(nbytes)
        self.blocks[ctypes.addressof(block)] = block
        self.allocations += 1
        return self._ok(name, ctypes.addressof(block))

    def _inside(self, ptr: int, nbytes: int) -> bool:
        return any(a <= ptr and ptr + nbytes <= a + len(b) for a, b in self.blocks.items())

    def cudaGetErrorName(self, err: CudaError) -> tuple[Any, ...]:
        return CudaError.cudaSuccess, err.name.encode()

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:
        if not self.devices:
            return CudaError.cudaErrorNoDevice, 0
        return self._ok("cudaGetDeviceCount", self.devices)

    def cudaGetDevice(self) -> tuple[Any, ...]:
        return self._ok("cudaGetDevice", 0)

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:
        return self._ok("cudaGetDeviceProperties", types.SimpleNamespace(name=b"NVIDIA L4", major=8, minor=9))

    def cudaMalloc(self, nbytes: int) -> tuple[Any, ...]:
        return self._alloc("cudaMalloc", nbytes)

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, ...]:
        return self._alloc("cudaMallocHost", nbytes)

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:
        del self.blocks[ptr]
        return self._ok("cudaFree")

    def cudaFreeHost(self, ptr: int) -> tuple[Any, ...]:
        del self.blocks[ptr]
        return self._ok("cudaFreeHost")

    def cudaStreamCreate(self) -> tuple[Any, ...]:
        return self._ok("cudaStreamCreate", 0x5EED)

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any, ...]:
        assert stream == 0x5EED
        return self._ok("cudaStreamSynchronize")

    def cudaStreamDestroy(self, stream: int) -> tuple[Any, ...]:
        self.streams_destroyed += 1
        return self._ok("cudaStreamDestroy")

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[Any, ...]:
        assert stream == 0x5EED
        assert self._inside(dst, nbytes) and self._inside(src, nbytes), "copy outside allocated memory"
        ctypes.memmove(dst, src, nbytes)
        self.copies.append((kind, nbytes))
        return self._ok("cudaMemcpyAsync")


def _view(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_ubyte * nbytes).from_address(address), dtype=dtype).reshape(shape)


def reference_outputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in engine computes: a mean map (float32 tensor) and a max score (float16 tensor)."""
    return {
        "logical_map": pixels.mean(axis=1, keepdims=True) / 255.0,
        "score": (pixels.max(axis=(1, 2, 3)) / 255.0).astype(np.float16).astype(np.float32),
    }


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        shape = tuple(shape)
        ok = name == "pixels" and 1 <= shape[0] <= self.engine.max_batch and shape[1:] == (C, H, W)
        self.shape = shape if ok else self.shape
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shape[0]
        return {"pixels": self.shape, "logical_map": (batch, 1, H, W), "score": (batch,)}[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert stream_handle == 0x5EED
        pixels = _view(self.addresses["pixels"], self.shape, np.float32)
        for name, value in reference_outputs(pixels).items():
            dtype = self.engine.dtypes[name]
            _view(self.addresses[name], value.shape, dtype)[...] = value.astype(dtype)
        return True


class FakeEngine:
    def __init__(self, max_batch: int, outputs: tuple[str, ...] = ("logical_map", "score")) -> None:
        self.max_batch = max_batch
        self.names = ("pixels", *outputs)
        self.dtypes = {
            "pixels": np.float32,
            "logical_map": np.float32,
            "score": np.float16,
            "extra": np.float32,
        }

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "pixels" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> Any:
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, C, H, W), (self.max_batch, C, H, W), (self.max_batch, C, H, W)]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Any] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Any:
        return self.inputs[index]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Any) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, path: str) -> bool:
        text = Path(path).read_text()
        if text.startswith("graph "):
            name, *dims = text.split()[1:]
            self.network.inputs.append(types.SimpleNamespace(name=name, shape=tuple(map(int, dims))))
            return True
        self.errors = [f"In node 0 (parseGraph): INVALID_GRAPH: {line}" for line in text.splitlines()]
        return False

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+timings"


class FakeConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[str, int] = {}
        self.cleared: list[str] = []
        self.profiles: list[dict[str, tuple]] = []
        self.loaded: list[bytes] = []
        self.cache: FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool_limits[pool] = size

    def clear_flag(self, flag: str) -> None:
        self.cleared.append(flag)

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile.shapes)
        return 0

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self.loaded.append(bytes(data))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(b"other-gpu") and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeBuilder:
    built: ClassVar[list[tuple[FakeNetwork, FakeConfig]]] = []

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
        FakeBuilder.built.append((network, config))
        return ENGINE_BYTES


class FakeRuntime:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        return FakeEngine(MAX_BATCH) if data == ENGINE_BYTES else None


def _fake_tensorrt(version: str) -> types.ModuleType:
    """The part of the `tensorrt` module the backend uses (TensorRT 10 flag numbering)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": "warning", "__init__": lambda self, level: None})
    trt.Builder, trt.Runtime, trt.OnnxParser = FakeBuilder, FakeRuntime, FakeParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(TF32="tf32")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def nptype(dtype: Any) -> Any:
        if dtype is None:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return dtype

    trt.nptype = nptype
    return trt


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """Stand-in TensorRT 10.13 and cuda-python; yields the runtime to inspect."""
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.13.3.9"))
    monkeypatch.setattr(trt_backend, "_import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "_native_handle", int)
    trt_backend._trt_logger.cache_clear()
    FakeBuilder.built = []
    yield cudart
    trt_backend._trt_logger.cache_clear()


def _spec(outputs: dict[str, tuple[int, ...]] | None = None) -> GraphSpec:
    return GraphSpec(
        file="model.fp32.onnx",
        precision="fp32",
        knn="faiss",
        input_name="pixels",
        input_shape=(C, H, W),
        max_batch=MAX_BATCH,
        outputs={"logical_map": (1, H, W), "score": ()} if outputs is None else outputs,
    )


def _runner(engine_path: Path, spec: GraphSpec) -> TensorRTBackend:
    """The loader, then the runner, as `open_bundle_graph` composes them."""
    return TensorRTBackend(engine_from_path(engine_path, spec), spec)


def _build_kwargs(tmp_path: Path, precision: str = "fp32") -> dict[str, Any]:
    return {
        "input_name": "pixels",
        "input_shape": (C, H, W),
        "max_batch": MAX_BATCH,
        "precision": precision,
        "onnx_sha256": SHA,
        "timing_cache_path": tmp_path / "timing.cache",
    }


def _graph(tmp_path: Path, text: str = f"graph pixels -1 {C} {H} {W}") -> Path:
    path = tmp_path / "model.onnx"
    path.write_text(text)
    return path


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, C, H, W)).astype(np.float32)


# -------------------------------------------------------------------------------- with stand-ins


def test_unavailable_reason_without_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.13.3.9"))

    def no_cuda_python() -> None:
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(trt_backend, "_import_cudart", no_cuda_python)
    assert tensorrt_unavailable_reason() == (
        "cuda-python is not installed (No module named 'cuda'); pip install 'npgmf-edge[tensorrt-cu12]' "
        "(CUDA 12 driver) or 'npgmf-edge[tensorrt-cu13]' (CUDA 13) on a machine with an NVIDIA GPU and "
        "driver; on a Jetson, TensorRT comes with JetPack (docs/DEPLOY.md)"
    )


def test_unavailable_reason_without_a_device(fake_cuda: FakeCudart) -> None:
    fake_cuda.devices = 0
    assert tensorrt_unavailable_reason() == (
        "no usable CUDA device: tensorrt: CUDA call cudaGetDeviceCount failed with cudaErrorNoDevice"
    )
    with pytest.raises(BackendError, match="cudaErrorNoDevice"):
        device_facts()


def test_device_facts_and_availability(fake_cuda: FakeCudart) -> None:
    assert tensorrt_unavailable_reason() is None
    assert device_facts() == FACTS


@pytest.mark.parametrize(("version", "flags"), [("10.13.3.9", 2), ("11.4.0.106", 0)])
def test_build_engine_writes_engine_cache_and_facts(
    tmp_path: Path, fake_cuda: FakeCudart, monkeypatch: pytest.MonkeyPatch, version: str, flags: int
) -> None:
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", version)
    engine_path = tmp_path / "bundle" / "model.fp32.engine"
    facts = build_engine(_graph(tmp_path), engine_path, **_build_kwargs(tmp_path))

    assert facts == {
        "file": "model.fp32.engine",
        "tensorrt_version": version,
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "precision": "fp32",
        "onnx_sha256": SHA,
        "max_batch": 4,
        "input_shape": [3, 4, 4],
    }
    assert engine_path.read_bytes() == b"serialized plan"
    assert (tmp_path / "timing.cache").read_bytes() == b"+timings"
    [(network, config)] = FakeBuilder.built
    assert network.flags == flags  # 1 << STRONGLY_TYPED on TensorRT 10; implicit (no flag) on 11
    assert config.pool_limits == {"workspace": 1 << 30}
    assert config.cleared == ["tf32"]
    assert config.profiles == [{"pixels": ((1, 3, 4, 4), (1, 3, 4, 4), (4, 3, 4, 4))}]  # opt at batch 1


def test_reduced_precision_builds_keep_tf32(tmp_path: Path, fake_cuda: FakeCudart) -> None:
    build_engine(_graph(tmp_path), tmp_path / "m.engine", **_build_kwargs(tmp_path, "fp16"))
    [(_, config)] = FakeBuilder.built
    assert config.cleared == []


def test_timing_cache_is_reused_and_extended(tmp_path: Path, fake_cuda: FakeCudart) -> None:
    onnx = _graph(tmp_path)
    build_engine(onnx, tmp_path / "a.engine", **_build_kwargs(tmp_path))
    build_engine(onnx, tmp_path / "b.engine", **_build_kwargs(tmp_path))
    first, second = (config for _, config in FakeBuilder.built)
    assert first.loaded == [b""]
    assert second.loaded == [b"+timings"]  # the first build's cache, read back
    assert (tmp_path / "timing.cache").read_bytes() == b"+timings+timings"


def test_timing_cache_from_another_gpu_is_replaced(
    tmp_path: Path, fake_cuda: FakeCudart, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "timing.cache").write_bytes(b"other-gpu")
    with caplog.at_level(logging.WARNING):
        build_engine(_graph(tmp_path), tmp_path / "m.engine", **_build_kwargs(tmp_path))
    assert "is from another TensorRT version or GPU" in caplog.text
    assert (tmp_path / "timing.cache").read_bytes() == b"+timings"


def test_parser_errors_are_all_reported_with_the_file(tmp_path: Path, fake_cuda: FakeCudart) -> None:
    onnx = _graph(tmp_path, "unsupported op Foo\nunsupported op Bar")
    with pytest.raises(BundleError) as raised:
        build_engine(onnx, tmp_path / "m.engine", **_build_kwargs(tmp_path))
    assert str(raised.value).startswith(f"TensorRT cannot parse {onnx}: ")
    assert "INVALID_GRAPH: unsupported op Foo; In node 0 (parseGraph): INVALID_GRAPH: unsupported op Bar" in (
        str(raised.value)
    )
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (f"graph image -1 {C} {H} {W}", r"has inputs \['image'\], not 'pixels'"),
        (f"graph pixels 1 {C} {H} {W}", r"has shape \(1, 3, 4, 4\), expected \(-1, 3, 4, 4\)"),
        ("graph pixels -1 3 8 8", r"has shape \(-1, 3, 8, 8\)"),
    ],
)
def test_graph_input_must_match_the_spec(
    tmp_path: Path, fake_cuda: FakeCudart, graph: str, message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        build_engine(_graph(tmp_path, graph), tmp_path / "m.engine", **_build_kwargs(tmp_path))


@pytest.fixture
def engine_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(ENGINE_BYTES)
    return path


def test_backend_runs_every_batch_size_without_allocating(engine_file: Path, fake_cuda: FakeCudart) -> None:
    with _runner(engine_file, _spec()) as backend:
        assert fake_cuda.allocations == 6  # pinned + device for pixels, logical_map, score
        for batch in (1, 3, 4, 2):
            pixels = _pixels(batch, seed=batch)
            fake_cuda.copies.clear()
            outputs = backend.infer(pixels)
            expected = reference_outputs(pixels)
            assert set(outputs) == {"logical_map", "score"}
            for name, value in outputs.items():
                assert value.dtype == np.float32 and value.shape == expected[name].shape
                np.testing.assert_allclose(value, expected[name], rtol=1e-6)
            # H2D of the batch only; D2H of float32 maps and float16 scores sized by the actual batch
            assert fake_cuda.copies == [(1, batch * 48 * 4), (2, batch * 16 * 4), (2, batch * 2)]
        assert fake_cuda.allocations == 6
    assert fake_cuda.blocks == {}
    assert fake_cuda.streams_destroyed == 1


def test_outputs_are_copies_not_views_of_pinned_memory(engine_file: Path, fake_cuda: FakeCudart) -> None:
    with _runner(engine_file, _spec()) as backend:
        first = backend.infer(_pixels(2, seed=1))["logical_map"]
        kept = first.copy()
        backend.infer(_pixels(2, seed=2))
        np.testing.assert_array_equal(first, kept)


def test_close_is_idempotent_and_infer_after_close_fails(engine_file: Path, fake_cuda: FakeCudart) -> None:
    backend = _runner(engine_file, _spec())
    backend.close()
    backend.close()
    assert fake_cuda.blocks == {}
    assert fake_cuda.streams_destroyed == 1
    with pytest.raises(BackendError, match="closed"):
        backend.infer(_pixels(1))


def test_unloadable_engine_is_a_bundle_error(tmp_path: Path, fake_cuda: FakeCudart) -> None:
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(b"plan from TensorRT 10.8")
    with pytest.raises(BundleError, match=r"TensorRT 10\.13\.3\.9 cannot load engine .*model\.fp32\.engine"):
        _runner(path, _spec())


def test_engine_outputs_must_match_the_manifest(engine_file: Path, fake_cuda: FakeCudart) -> None:
    with pytest.raises(BundleError, match=r"has outputs \['logical_map', 'score'\], the manifest says"):
        _runner(engine_file, _spec({"fused_map": (1, H, W), "score": ()}))
    assert fake_cuda.blocks == {}


def test_engine_max_batch_must_cover_the_manifest(engine_file: Path, fake_cuda: FakeCudart) -> None:
    spec = GraphSpec("model.fp32.onnx", "fp32", "faiss", "pixels", (C, H, W), MAX_BATCH + 4)
    with pytest.raises(BundleError, match=r"accepts up to \(4, 3, 4, 4\), the manifest needs \(8, 3, 4, 4\)"):
        _runner(engine_file, spec)


def test_cuda_failure_names_the_call_and_frees_what_was_allocated(
    engine_file: Path, fake_cuda: FakeCudart
) -> None:
    fake_cuda.failing.add("cudaMalloc")
    with pytest.raises(BackendError, match="CUDA call cudaMalloc failed with cudaErrorMemoryAllocation"):
        _runner(engine_file, _spec())
    assert fake_cuda.allocations == 1  # the first pinned buffer, then the failing device allocation
    assert fake_cuda.blocks == {}
    assert fake_cuda.streams_destroyed == 1


# ----------------------------------------------------------------------------- real TensorRT + GPU


@pytest.fixture(scope="module")
def real_tensorrt() -> types.ModuleType:
    reason = tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import tensorrt

    return tensorrt


def _tiny_onnx(path: Path) -> Path:
    """A small two-output conv net with a dynamic batch axis, exported by the TorchScript exporter."""
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 1, 1)

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = torch.relu(self.conv(x / 255.0))
            return self.head(features), torch.nn.functional.avg_pool2d(features, 2)

    torch.manual_seed(0)
    names = ["pixels", "logical_map", "patch_features"]
    torch.onnx.export(
        Tiny().eval(),
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        input_names=names[:1],
        output_names=names[1:],
        dynamic_axes={name: {0: "batch"} for name in names},
        opset_version=17,
        dynamo=False,
    )
    return path


def _real_build(tmp_path: Path, onnx: Path, engine_name: str) -> dict[str, Any]:
    return build_engine(
        onnx,
        tmp_path / engine_name,
        input_name="pixels",
        input_shape=(3, 16, 16),
        max_batch=4,
        precision="fp32",
        onnx_sha256=SHA,
        timing_cache_path=tmp_path / "timing.cache",
    )


@pytest.mark.tensorrt
def test_real_engine_matches_onnxruntime(tmp_path: Path, real_tensorrt: types.ModuleType) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    facts = device_facts()
    name = engine_file_name("fp32", SHA, facts)
    capability = facts["compute_capability"].replace(".", "")
    assert name == f"model.fp32.trt{real_tensorrt.__version__}.sm{capability}.{SHA[:12]}.engine"
    recorded = _real_build(tmp_path, onnx, name)
    assert recorded["tensorrt_version"] == real_tensorrt.__version__
    bundle = {"precision": "fp32", "onnx_sha256": SHA, "max_batch": 4, "input_shape": (3, 16, 16)}
    assert engine_mismatch(recorded, {**facts, **bundle}) is None

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    spec = GraphSpec("tiny.onnx", "fp32", "faiss", "pixels", (3, 16, 16), 4)
    with _runner(tmp_path / name, spec) as backend:
        for batch in (1, 3, 4):
            pixels = np.random.default_rng(batch).uniform(0, 255, (batch, 3, 16, 16)).astype(np.float32)
            names = ["logical_map", "patch_features"]
            expected = dict(zip(names, session.run(names, {"pixels": pixels}), strict=True))
            outputs = backend.infer(pixels)
            for key, value in expected.items():
                assert outputs[key].shape == value.shape
                np.testing.assert_allclose(outputs[key], value, rtol=1e-4, atol=1e-4)


@pytest.mark.tensorrt
def test_real_timing_cache_is_created_and_reused(
    tmp_path: Path, real_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    attached: list[bool] = []
    original = trt_backend._attach_timing_cache

    def spy(config: Any, path: Path) -> bool:
        attached.append(original(config, path))
        return attached[-1]

    monkeypatch.setattr(trt_backend, "_attach_timing_cache", spy)
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    _real_build(tmp_path, onnx, "a.engine")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    _real_build(tmp_path, onnx, "b.engine")
    assert attached == [False, True]  # fresh cache first, the saved one loaded the second time


@pytest.mark.tensorrt
def test_real_damaged_engine_is_a_bundle_error(tmp_path: Path, real_tensorrt: types.ModuleType) -> None:
    path = tmp_path / "damaged.engine"
    path.write_bytes(b"not a TensorRT plan")
    with pytest.raises(BundleError, match="cannot load engine"):
        _runner(path, GraphSpec("tiny.onnx", "fp32", "faiss", "pixels", (3, 16, 16), 4))
