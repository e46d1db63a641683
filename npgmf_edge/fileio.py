"""Atomic file writes (a run killed at any moment leaves either the old file or the new one, never half)
and the lock that keeps two processes from writing into one output folder.

Every writer of results (checkpoints, configs, summaries, ONNX graphs, FAISS indexes) goes through
`atomic_write`: the content is written to a temporary file in the target's folder, flushed to disk, given
ordinary permissions, and renamed over the target (`os.replace`). numpy and the standard library only, so
the runtime can use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from npgmf_edge.errors import OutputError

LOCK_FILE = ".npgmf-edge.lock"
FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be shared like any other file
DIR_MODE = 0o755


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


def atomic_directory(out: Path, fill: Callable[[Path], None]) -> Path:
    """Let `fill` write a whole folder into a hidden staging folder beside `out`, then rename it into
    place; a previous `out` is removed only after that succeeded, and a failure leaves it untouched and no
    staging folder behind. The bundle writer and the Triton repository writer use it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
    try:
        fill(staging)
        os.chmod(staging, DIR_MODE)  # mkdtemp makes it private; the folder is meant to be shared
        if out.exists():
            os.replace(out, previous)
        try:
            os.replace(staging, out)
        except OSError:
            if previous.exists():
                os.replace(previous, out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(previous, ignore_errors=True)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_json(obj: Any, path: Path) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _lock_holder_gone(lock: Path) -> bool:
    """True when the lock names a process that no longer runs (POSIX only: elsewhere a lock stays put)."""
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return False
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder`/.npgmf-edge.lock while writing into `folder`; a second writer is refused (OutputError
    naming the holder), a lock left by a killed process is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            break
        except FileExistsError:
            if not _lock_holder_gone(lock):
                holder = lock.read_text().strip() if lock.is_file() else "?"
                raise OutputError(
                    f"{folder} is being written by another npgmf-edge process (pid {holder}, lock {lock}); "
                    "wait for it to finish or choose another --out (delete the lock if no such process runs)"
                ) from None
            lock.unlink(missing_ok=True)
    else:
        raise OutputError(f"cannot take the lock {lock}; choose another --out")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        yield lock
    finally:
        lock.unlink(missing_ok=True)
