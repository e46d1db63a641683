"""Checkpoint files without pickle: tensors in safetensors, everything else in JSON; writes are atomic.

Every write goes through `npgmf_edge.fileio.atomic_write`, so a run killed at any moment leaves either the
old file or the new one. An optimiser's state is flattened into named tensors plus JSON-able hyper-parameters,
so a resumed run continues with the same Adam moments and step counts.

Example:
    >>> save_tensors({"w": torch.zeros(2)}, Path("ckpt.safetensors"), {"epoch": 3})
    >>> tensors, meta = load_tensors(Path("ckpt.safetensors"))
    >>> meta["epoch"]
    3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from npgmf_edge.errors import CheckpointError
from npgmf_edge.fileio import atomic_write_bytes

META_KEY = "npgmf"  # safetensors metadata holds one JSON document under this key
OPTIMIZER_PREFIX = "optimizer.state."


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, Any] | None = None) -> None:
    """Named CPU tensors (+ a JSON-able dict) to a safetensors file, atomically."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    metadata = {META_KEY: json.dumps(meta or {})}
    atomic_write_bytes(path, safetensors_bytes(plain, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of `save_tensors`: (tensors, meta). CheckpointError if missing or unreadable."""
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


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten `optimizer.state_dict()`: tensors as `optimizer.state.<param>.<name>`, the rest as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Restore what `optimizer_to_tensors` saved into an optimiser over the same parameters."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            index, name = key[len(OPTIMIZER_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimiser state does not fit this model: {exc}") from exc
