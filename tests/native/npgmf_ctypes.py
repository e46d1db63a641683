"""libnpgmf through ctypes: the C ABI (native/include/npgmf/npgmf.h) as a Python caller sees it.

Standard library + numpy only, so the sanitizer driver (`_driver.py`) can load it in a process where the
sanitizer runtime is preloaded and nothing heavy is imported.

Example:
    >>> lib = NativeLibrary(Path("native/build/libnpgmf.so"))
    >>> with lib.open(bundle, precision="int8") as handle:
    ...     result = handle.inspect_file(path, with_map_shape=(h, w))
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATUS_NAMES = tuple(
    f"NPGMF_{name}"
    for name in ("OK", "INVALID_ARGUMENT", "BUNDLE_ERROR", "SELFTEST_FAILED", "IMAGE_ERROR", "BACKEND_ERROR",
                 "UNSUPPORTED", "BUFFER_TOO_SMALL", "NON_FINITE", "INTERNAL", "SIGNATURE_ERROR")
)  # fmt: skip
VERDICTS = ("good", "anomalous", "error")


class OpenOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("precision", ctypes.c_char_p),
        ("fallback", ctypes.c_char_p),
        ("threads", ctypes.c_int32),
        ("device", ctypes.c_char_p),
        ("self_test", ctypes.c_int32),
        ("max_pixels", ctypes.c_int64),
        ("trust", ctypes.c_char_p),  # libnpgmf 0.2
    ]


class Result(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("score", ctypes.c_double),
        ("threshold", ctypes.c_double),
        ("verdict", ctypes.c_int32),
        ("map", ctypes.POINTER(ctypes.c_float)),
        ("map_capacity", ctypes.c_size_t),
        ("map_height", ctypes.c_int32),
        ("map_width", ctypes.c_int32),
    ]


class Info(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("precision", ctypes.c_char * 8),
        ("requested_precision", ctypes.c_char * 8),
        ("knn", ctypes.c_char * 8),
        ("backend", ctypes.c_char * 128),
        ("fallback_reason", ctypes.c_char * 2048),
        ("image_size", ctypes.c_int32),
        ("self_test_ran", ctypes.c_int32),
        ("threshold", ctypes.c_double),
        ("self_test_score_error", ctypes.c_double),
        ("self_test_budget", ctypes.c_double),
        ("self_test_map_error", ctypes.c_double),
        ("self_test_map_budget", ctypes.c_double),
        ("self_test_verdict_flips", ctypes.c_int32),
        ("self_test_max_flips", ctypes.c_int32),
        ("signature_verified", ctypes.c_int32),  # libnpgmf 0.3
        ("signed_by", ctypes.c_char * 72),
    ]


class NativeError(RuntimeError):
    """A call that did not return NPGMF_OK: its status name and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else str(status)


@dataclass(frozen=True)
class NativeResult:
    score: float
    threshold: float
    verdict: str
    anomaly_map: np.ndarray | None


class NativeLibrary:
    """The loaded shared library with its functions' signatures declared."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = ctypes.CDLL(str(path))
        handle, status = ctypes.c_void_p, ctypes.c_int
        lib.npgmf_abi_version.restype = ctypes.c_int32
        lib.npgmf_version_string.restype = ctypes.c_char_p
        lib.npgmf_last_error.restype = ctypes.c_char_p
        lib.npgmf_open_options_init.argtypes = [ctypes.c_void_p]  # the first ABI's: version 1's struct
        lib.npgmf_open_options_init_sized.argtypes = [ctypes.POINTER(OpenOptions), ctypes.c_size_t]
        lib.npgmf_result_init.argtypes = [ctypes.POINTER(Result)]
        lib.npgmf_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(handle)]
        lib.npgmf_inspect_rgb.argtypes = [
            handle,
            ctypes.c_void_p,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_size_t,
            ctypes.POINTER(Result),
        ]
        lib.npgmf_inspect_encoded.argtypes = [
            handle,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(Result),
        ]
        lib.npgmf_inspect_file.argtypes = [handle, ctypes.c_char_p, ctypes.POINTER(Result)]
        lib.npgmf_describe.argtypes = [handle, ctypes.POINTER(Info)]
        lib.npgmf_close.argtypes = [handle]
        lib.npgmf_close.restype = None
        for name in ("npgmf_open", "npgmf_inspect_rgb", "npgmf_inspect_encoded", "npgmf_inspect_file",
                     "npgmf_describe", "npgmf_open_options_init", "npgmf_open_options_init_sized",
                     "npgmf_result_init"):  # fmt: skip
            getattr(lib, name).restype = status

    def last_error(self) -> str:
        return self.lib.npgmf_last_error().decode()

    def check(self, status: int) -> None:
        if status != 0:
            raise NativeError(status, self.last_error())

    def options(self, precision: str | None = None, fallback: str | None = None, device: str | None = None,
                threads: int = 0, self_test: bool = True, max_pixels: int = 0,
                trust: Path | None = None) -> OpenOptions:  # fmt: skip
        options = OpenOptions()
        self.check(self.lib.npgmf_open_options_init_sized(ctypes.byref(options), ctypes.sizeof(options)))
        options.precision = precision.encode() if precision else None
        options.fallback = fallback.encode() if fallback else None
        options.device = device.encode() if device else None
        options.threads, options.self_test, options.max_pixels = threads, int(self_test), max_pixels
        options.trust = str(trust).encode() if trust is not None else None
        return options

    def open(self, bundle: Path, **options) -> NativeInspector:
        handle = ctypes.c_void_p()
        self.check(
            self.lib.npgmf_open(
                str(bundle).encode(), ctypes.byref(self.options(**options)), ctypes.byref(handle)
            )
        )
        return NativeInspector(self, handle)


class NativeInspector:
    """One open handle; `close` (or the context manager) releases it."""

    def __init__(self, library: NativeLibrary, handle: ctypes.c_void_p) -> None:
        self.library, self.handle = library, handle

    def _call(self, function, *args, map_shape: tuple[int, int] | None = None) -> NativeResult:
        result = Result()
        self.library.lib.npgmf_result_init(ctypes.byref(result))
        buffer = None
        if map_shape is not None:
            buffer = np.full(map_shape, np.nan, dtype=np.float32)
            result.map = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            result.map_capacity = buffer.size
        self.library.check(function(self.handle, *args, ctypes.byref(result)))
        return NativeResult(result.score, result.threshold, VERDICTS[result.verdict], buffer)

    def inspect_rgb(self, image: np.ndarray, with_map: bool = True) -> NativeResult:
        """An (H, W, 3) uint8 array, possibly a view with padded rows (its stride is passed)."""
        assert image.dtype == np.uint8 and image.shape[2:] == (3,) and image.strides[1:] == (3, 1)
        height, width = image.shape[:2]
        return self._call(
            self.library.lib.npgmf_inspect_rgb, image.ctypes.data, height, width, image.strides[0],
            map_shape=(height, width) if with_map else None,
        )  # fmt: skip

    def inspect_encoded(self, data: bytes, map_shape: tuple[int, int] | None = None) -> NativeResult:
        return self._call(self.library.lib.npgmf_inspect_encoded, data, len(data), map_shape=map_shape)

    def inspect_file(self, path: Path, map_shape: tuple[int, int] | None = None) -> NativeResult:
        return self._call(self.library.lib.npgmf_inspect_file, str(path).encode(), map_shape=map_shape)

    def describe(self) -> Info:
        info = Info()
        info.struct_size = ctypes.sizeof(Info)
        self.library.check(self.library.lib.npgmf_describe(self.handle, ctypes.byref(info)))
        return info

    def close(self) -> None:
        self.library.lib.npgmf_close(self.handle)
        self.handle = None

    def __enter__(self) -> NativeInspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
