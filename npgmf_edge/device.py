"""Which torch device training and torch-side inference run on (`--device auto|cpu|cuda`).

One resolution for every command, so a run's memory bank and the queries searched against it are
computed on the same device: CUDA convolutions (TF32, other kernels) give patch features that differ from
the CPU's by float rounding, and distances between features from two devices mix the two.

Example:
    >>> resolve_device("auto")   # cuda when torch sees a GPU, else cpu
    device(type='cpu')
"""

from __future__ import annotations

import torch

from npgmf_edge.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> cuda when `torch.cuda.is_available()`, else cpu; `cuda` without CUDA is a ConfigError."""
    if isinstance(name, torch.device):
        name = name.type
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: torch {torch.__version__} sees no CUDA GPU here; use --device cpu or auto"
        )
    return torch.device(name)
