"""The native runtime's build for its tests: the library built (release, ASan + UBSan, TSan) by
native/build.sh, and skipped with the reason only when it cannot be configured here (no compiler, CMake
or Debian packages: run native/setup_deps.sh as root). A compile error is a failure, not a skip."""

from __future__ import annotations

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
