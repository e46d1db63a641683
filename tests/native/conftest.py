"""Fixtures of the native runtime's tests (native_build.py says how the library is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from native_build import build


@pytest.fixture(scope="session")
def native_build() -> Path:
    return build("release")


@pytest.fixture(scope="session")
def native_lib(native_build: Path):
    from npgmf_ctypes import NativeLibrary

    return NativeLibrary(native_build / "libnpgmf.so")


@pytest.fixture(scope="session")
def asan_build() -> Path:
    return build("address")


@pytest.fixture(scope="session")
def tsan_build() -> Path:
    return build("thread")
