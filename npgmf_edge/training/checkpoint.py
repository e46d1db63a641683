"""An optimiser's state as named tensors plus JSON-able hyper-parameters, so a resumed run continues with
the same Adam moments and step counts; `npgmf_edge.fileio.save_tensors` writes them without pickle.

Example:
    >>> tensors, meta = optimizer_to_tensors(optimizer)
    >>> optimizer_from_tensors(optimizer, tensors, meta)
"""

from __future__ import annotations

from typing import Any

import torch

from npgmf_edge.errors import CheckpointError

OPTIMIZER_PREFIX = "optimizer.state."


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
