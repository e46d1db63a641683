"""Runs libnpgmf calls listed in a JSON file and prints each call's status and message as one JSON line.

Started by test_native.py in a fresh interpreter with a sanitizer runtime preloaded (LD_PRELOAD), against
the ASan + UBSan build: any memory error or undefined behaviour aborts the process, which the test sees.
Imports only the standard library, numpy and the ctypes binding.

    python _driver.py LIBRARY CASES.json
Each case: {"call": "open", "bundle": B, "options": {...}} | {"call": "file" | "bytes", "bundle": B,
"path": P} | {"call": "rgb", "bundle": B, "shape": [H, W, 3]} | {"call": "null"} (every NULL pointer and
wrong struct_size the ABI can be given); an "images" group may set "max_pixels".
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np
from npgmf_ctypes import STATUS_NAMES, Info, NativeError, NativeLibrary, OpenOptions, Result


def _status(lib: NativeLibrary, code: int) -> dict:
    return {"status": STATUS_NAMES[code], "message": lib.last_error()}


def _null_calls(lib: NativeLibrary) -> list[dict]:
    c = lib.lib
    out = []
    handle = ctypes.c_void_p()
    out.append(_status(lib, c.npgmf_open(None, None, ctypes.byref(handle))))
    out.append(_status(lib, c.npgmf_open(b"/nonexistent", None, None)))
    options = OpenOptions()
    c.npgmf_open_options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.struct_size = 3
    out.append(_status(lib, c.npgmf_open(b"/nonexistent", ctypes.byref(options), ctypes.byref(handle))))
    out.append(_status(lib, c.npgmf_open_options_init(None)))
    out.append(_status(lib, c.npgmf_open_options_init_sized(None, ctypes.sizeof(options))))
    out.append(_status(lib, c.npgmf_open_options_init_sized(ctypes.byref(options), 8)))
    result = Result()
    c.npgmf_result_init(ctypes.byref(result))
    pixel = (ctypes.c_uint8 * 3)()
    out.append(_status(lib, c.npgmf_inspect_rgb(None, pixel, 1, 1, 3, ctypes.byref(result))))
    out.append(_status(lib, c.npgmf_inspect_rgb(None, pixel, 1, 1, 3, None)))
    result.struct_size = 1
    out.append(_status(lib, c.npgmf_inspect_encoded(None, pixel, 3, ctypes.byref(result))))
    out.append(_status(lib, c.npgmf_inspect_file(None, None, None)))
    info = Info()
    out.append(_status(lib, c.npgmf_describe(None, ctypes.byref(info))))  # struct_size 0
    c.npgmf_close(None)
    return out


def _inspector_calls(lib: NativeLibrary, bundle: str, cases: list[dict], max_pixels: int) -> list[dict]:
    """Calls on one open handle: NULL pixels/path/data and wrong struct sizes with a real handle, and the
    listed images."""
    out = []
    with lib.open(Path(bundle), self_test=False, max_pixels=max_pixels) as inspector:
        c, h = lib.lib, inspector.handle
        result = Result()
        c.npgmf_result_init(ctypes.byref(result))
        out.append(_status(lib, c.npgmf_inspect_rgb(h, None, 4, 4, 12, ctypes.byref(result))))
        pixels = np.zeros((4, 4, 3), np.uint8)
        out.append(_status(lib, c.npgmf_inspect_rgb(h, pixels.ctypes.data, 4, 4, 5, ctypes.byref(result))))
        out.append(_status(lib, c.npgmf_inspect_rgb(h, pixels.ctypes.data, 0, 4, 12, ctypes.byref(result))))
        out.append(_status(lib, c.npgmf_inspect_file(h, None, ctypes.byref(result))))
        out.append(_status(lib, c.npgmf_inspect_encoded(h, None, 10, ctypes.byref(result))))
        small = (ctypes.c_float * 3)()
        result.map, result.map_capacity = ctypes.cast(small, ctypes.POINTER(ctypes.c_float)), 3
        out.append(_status(lib, c.npgmf_inspect_rgb(h, pixels.ctypes.data, 4, 4, 12, ctypes.byref(result))))
        result = Result()
        result.struct_size = ctypes.sizeof(Result) - 8
        out.append(_status(lib, c.npgmf_inspect_rgb(h, pixels.ctypes.data, 4, 4, 12, ctypes.byref(result))))
        for case in cases:
            try:
                if case["call"] == "file":
                    inspector.inspect_file(Path(case["path"]))
                elif case["call"] == "bytes":
                    inspector.inspect_encoded(Path(case["path"]).read_bytes())
                out.append({"status": "NPGMF_OK", "message": ""})
            except NativeError as exc:
                out.append({"status": exc.status, "message": str(exc)})
    return out


def main() -> None:
    lib = NativeLibrary(Path(sys.argv[1]))
    cases = json.loads(Path(sys.argv[2]).read_text())
    results: list[dict] = [{"group": "null", "results": _null_calls(lib)}]
    for case in cases:
        if case["call"] == "open":
            try:
                lib.open(Path(case["bundle"]), **case.get("options", {})).close()
                results.append({"name": case["name"], "status": "NPGMF_OK", "message": ""})
            except NativeError as exc:
                results.append({"name": case["name"], "status": exc.status, "message": str(exc)})
        elif case["call"] == "images":
            results.append(
                {
                    "group": "images",
                    "results": _inspector_calls(
                        lib, case["bundle"], case["images"], case.get("max_pixels", 0)
                    ),
                }
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
