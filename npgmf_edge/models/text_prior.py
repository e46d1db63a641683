"""Abstract global context (AGC): the category prompt's frozen CLIP text embedding and its adapter.

`compute_text_embedding` runs the open_clip text encoder once, at training time, for the L2-normalised
embedding of the prompt (default: the category name). `TextPrior` keeps it as a buffer and adapts it with
a trainable FC layer broadcast to a decoder stage's grid; `freeze()` turns FC(embedding) into a constant
of the exported graph, so no text encoder is needed after training. Text-encoder weights come from one
place the caller chooses: the open_clip hub tag, a local checkpoint file, or random (which warns).

Example:
    >>> emb = compute_text_embedding("breakfast box", pretrained=False)   # random CLIP, warns
    >>> prior = TextPrior(emb, out_dim=32)
    >>> prior(torch.zeros(2, 64, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.errors import WeightsError

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "openai"


def _create_clip(model_name: str, source: str | None, seed: int) -> nn.Module:
    import open_clip  # only needed here, at training time

    with torch.random.fork_rng():  # random init is reproducible and leaves the caller's RNG alone
        torch.manual_seed(seed)
        return open_clip.create_model(model_name, pretrained=source)


def compute_text_embedding(
    prompt: str,
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained_tag: str = DEFAULT_CLIP_PRETRAINED,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The L2-normalised CLIP text embedding (E,) of `prompt`, float32 on CPU: from `weights` (a local
    open_clip checkpoint), else the hub's `pretrained_tag`, else (`pretrained=False`) random, warning."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"CLIP weights file not found: {path}")
        source: str | None = str(path)
        where = f"from {path}"
    elif pretrained:
        source, where = pretrained_tag, f"for tag {pretrained_tag!r}"
    else:
        log.warning(
            "CLIP %s: random initialisation chosen explicitly (--random-clip or --no-pretrained); "
            "the text prior carries no meaning",
            model_name,
        )
        source, where = None, "(random)"
    try:
        model = _create_clip(model_name, source, seed)
    except Exception as exc:  # open_clip raises RuntimeError, hub errors, key mismatches, ...
        hint = (
            "check the file is an open_clip state dict for this model"
            if weights is not None
            else "offline, pass --clip-weights PATH to a local checkpoint, or --random-clip"
        )
        raise WeightsError(
            f"cannot load CLIP {model_name} weights {where} ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    import open_clip

    tokens = open_clip.get_tokenizer(model_name)([prompt])
    model.eval()
    with torch.no_grad():
        embedding = model.encode_text(tokens)[0].float()
    return F.normalize(embedding, dim=0)


class TextPrior(nn.Module):
    """Frozen text embedding (buffer) -> trainable FC -> constant map broadcast to a stage's grid."""

    def __init__(self, embedding: torch.Tensor, out_dim: int) -> None:
        super().__init__()
        if embedding.ndim != 1:
            raise ValueError(f"text embedding must be 1-D (E,), got shape {tuple(embedding.shape)}")
        self.register_buffer("embedding", embedding.detach().clone().float())
        self.fc = nn.Linear(embedding.numel(), out_dim)
        self.out_dim = out_dim
        self.register_buffer("frozen_context", None, persistent=False)

    def freeze(self) -> TextPrior:
        """Store FC(embedding) as a plain buffer for inference, so an exported graph holds one constant
        instead of the FC and the CLIP-sized embedding. `train()` drops it again."""
        with torch.no_grad():
            self.frozen_context = self.fc(self.embedding).detach().clone()
        return self

    def train(self, mode: bool = True) -> TextPrior:
        if mode:
            self.frozen_context = None
        return super().train(mode)

    def context(self) -> torch.Tensor:
        """FC(embedding), (out_dim,): the frozen constant after `freeze()`, else computed."""
        if self.frozen_context is not None:
            return self.frozen_context
        return self.fc(self.embedding)

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        """(out_dim) context broadcast to like's batch and grid: (B, out_dim, H, W), by arithmetic rather
        than `expand(like.shape)`, so the exported graph's shapes stay static but for the batch."""
        return like[:, :1] * 0.0 + self.context().view(1, self.out_dim, 1, 1)
