"""The native runtime's build for its tests: the library built (release, ASan + UBSan, TSan) by
native/build.sh, and skipped with the reason only when it cannot be configured here (no compiler, CMake
or Debian packages: run native/setup_deps.sh as root). A compile error is a failure, not a skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIRS = {"release": "native/build", "address": "native/build-asan", "thread": "native/build-tsan"}
CONFIGURE_FAILED = 3  # native/build.sh's exit code when CMake cannot configure (missing dependencies)


def build(variant: str) -> Path:
    """The build folder of `variant`, built (incrementally) now."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("the native build needs cmake and ninja: run native/setup_deps.sh as root")
    env = {**os.environ, "NPGMF_PYTHON": os.environ.get("NPGMF_PYTHON", sys.executable)}
    done = subprocess.run([ROOT / "native/build.sh", variant], env=env, capture_output=True, text=True)
    if done.returncode == CONFIGURE_FAILED:
        pytest.skip(f"libnpgmf cannot be configured here ({done.stderr.strip()}); run native/setup_deps.sh")
    if done.returncode != 0:
        pytest.fail(f"native/build.sh {variant} failed: {done.stderr.strip()}")
    return ROOT / BUILD_DIRS[variant]


def sanitizer_runtime(name: str) -> str:
    """The path of gcc's sanitizer runtime (libasan.so, libtsan.so) for LD_PRELOAD into an uninstrumented
    interpreter."""
    found = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not found or not Path(found).exists():
        pytest.skip(f"gcc has no {name} here")
    return str(Path(found).resolve())


def run_under_asan(asan_build: Path, cases: list[dict], folder: Path) -> list[dict]:
    """_driver.py's results for `cases`, in a fresh interpreter with ASan + UBSan preloaded, against the
    ASan build: any memory error or undefined behaviour fails the test."""
    here = Path(__file__).parent
    (folder / "cases.json").write_text(json.dumps(cases))
    env = {
        **os.environ,
        # libstdc++ preloaded too: ASan resolves __cxa_throw at start, before ctypes loads the library
        "LD_PRELOAD": f"{sanitizer_runtime('libasan.so')} {sanitizer_runtime('libstdc++.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONPATH": str(here),
    }
    command = [sys.executable, here / "_driver.py", asan_build / "libnpgmf.so", folder / "cases.json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout)
