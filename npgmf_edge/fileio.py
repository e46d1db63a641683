"""Atomic file writes (a run killed at any moment, or a full disk, leaves either the old file or the new one,
never half), the lock that keeps two processes from writing into one output folder, and the readers and
hashes that runs and bundles share (JSON, safetensors, SHA-256).

Every writer of results (checkpoints, configs, summaries, overlays, ONNX graphs, FAISS indexes) goes
through `atomic_write`: the content is written to a temporary file in the target's folder, flushed to disk,
given ordinary permissions, and renamed over the target (`os.replace`); a failed write removes its temporary
file. The standard library and `filelock` only at import (the safetensors functions import safetensors
when called), so the runtime can use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from npgmf_edge.errors import CheckpointError, OutputError

if TYPE_CHECKING:
    import torch

LOCK_FILE = ".npgmf-edge.lock"
FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be shared like any other file
DIR_MODE = 0o755
HASH_CHUNK = 1 << 20
META_KEY = "npgmf"  # safetensors metadata holds one JSON document under this key


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


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, Any] | None = None) -> None:
    """Named CPU tensors (+ a JSON-able dict) to a safetensors file, atomically; nothing is pickled."""
    from safetensors.torch import save as safetensors_bytes

    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    metadata = {META_KEY: json.dumps(meta or {})}
    atomic_write_bytes(path, safetensors_bytes(plain, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of `save_tensors`: (tensors, meta). CheckpointError if missing or unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
        return tensors, json.loads(metadata.get(META_KEY, "{}"))
    except Exception as exc:  # safetensors raises its own error types for truncated / foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_hashes(
    root: Path,
    files: dict[str, str],
    recorded_in: Path,
    error: type[Exception],
    words: tuple[str, str, str, str],
) -> None:
    """Every listed file is present with the SHA-256 recorded in `recorded_in`, else `error` naming it.
    Bundles and run directories both check this way; `words` is (what, made by, redo, command)."""
    what, made_by, redo, command = words
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise error(f"{path} is missing from the {what}; {redo} it with `npgmf-edge {command}`")
        if sha256_file(path) != expected:
            raise error(
                f"{path} does not match the SHA-256 recorded in {recorded_in} (damaged or changed after "
                f"{made_by}); {redo} the {what} with `npgmf-edge {command}`"
            )


@contextlib.contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder`/.npgmf-edge.lock while writing into `folder`; a second writer is refused at once
    (OutputError naming the holder's pid). A kernel file lock (`filelock`), not a pid file: released however
    its holder dies. The file stays after release (else two writers could lock two files of one name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = path.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise OutputError(
            f"{folder} is being written by another npgmf-edge process (pid {holder}, lock {path}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        with contextlib.suppress(OSError):  # only informs a refused writer (Windows locks forbid the write)
            path.write_text(str(os.getpid()))
        yield path
    finally:
        lock.release()
