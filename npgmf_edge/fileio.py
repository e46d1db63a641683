"""Atomic file writes: a run killed at any moment leaves either the old file or the new one, never half.

Every writer of results (checkpoints, configs, summaries, ONNX graphs, FAISS indexes) goes through
`atomic_write`: the content is written to a temporary file in the target's folder, flushed to disk, given
ordinary permissions, and renamed over the target (`os.replace`). numpy and the standard library only, so
the runtime can use it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be shared like any other file


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a temporary file beside `path`, then move it into place; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_json(obj: Any, path: Path) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
