"""NPGMF logical branch as a plain `nn.Module`: raw pixels in, logical anomaly map out.

    pixels [0, 255] -> ImageNormalize -> frozen encoder E -> f_E^1..3
      f_E^k -> atrous block -> z_k -> vector quantiser -> q_k                       (NMC, optional)
      f_E^1..3 -> OCE bottleneck -> stride-32 embedding
      -> decoder stage 3, 2, 1 (upsample, fuse with text context + q_k, LeWin, de-ResNet) -> f_D^3..1
      -> M_L = sum_k Up(1 - cos(f_E^k, f_D^k))                                         (Eq. 7)
    f_D^1 -> reconstruction head -> normalised RGB (training only)

`forward` is the inference path (exported inside `InspectionNet`): after `text_prior.freeze()` the
prior is a constant, codebooks are constants, window shapes are static. `forward_train` returns
everything the loss needs as a typed `LogicalForward`. Shapes are checked at construction: a bad
image / window size is a ConfigError that names the decoder stage.

Example:
    >>> cfg = get_preset("tiny").logical
    >>> net = NpgmfLogicalNet(cfg, 128, compute_text_embedding("breakfast box", pretrained=False),
    ...                       pretrained=False, weights=None)
    >>> net.eval()(torch.zeros(1, 3, 128, 128)).shape
    torch.Size([1, 1, 128, 128])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from npgmf_edge.config import LogicalConfig
from npgmf_edge.errors import ConfigError
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.logical.anomaly_map import logical_anomaly_map
from npgmf_edge.models.logical.bottleneck import OCEBottleneck
from npgmf_edge.models.logical.codebook import AtrousBlock, VectorQuantizer
from npgmf_edge.models.logical.decoder import DecoderStage, ReconstructionHead
from npgmf_edge.models.text_prior import TextPrior


@dataclass
class LogicalForward:
    """Everything one training forward pass produces (lists are per level, finest first)."""

    encoder_features: list[torch.Tensor]
    decoder_features: list[torch.Tensor]
    reconstruction: torch.Tensor  # (B, 3, S, S), ImageNet-normalised
    target: torch.Tensor  # the normalised input the reconstruction should match
    vq_losses: list[torch.Tensor] = field(default_factory=list)  # empty without codebooks
    code_indices: list[torch.Tensor] = field(default_factory=list)  # (B, h_k, w_k) each
    latents: list[torch.Tensor] = field(default_factory=list)  # z_k before quantisation (detached)


class NpgmfLogicalNet(nn.Module):
    """Frozen encoder + OCE + (text prior, codebooks) + fusing decoder; see the module docstring.
    `text_embedding` (E,), needed with `cfg.use_text_prior`, is a buffer: a rebuilt model needs no CLIP.
    `warn_random=False` is for rebuilding before loading a state dict."""

    def __init__(
        self,
        cfg: LogicalConfig,
        image_size: int,
        text_embedding: torch.Tensor | None,
        pretrained: bool,
        weights: str | None,
        *,
        warn_random: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.encoder = FrozenEncoder(cfg.encoder, tuple(cfg.out_indices), pretrained, weights, warn_random)
        channels, strides = self.encoder.channels, self.encoder.strides
        self.bottleneck = OCEBottleneck(channels, strides, cfg.decoder_block, cfg.decoder_depth)
        if image_size % self.bottleneck.out_stride != 0:
            raise ConfigError(
                f"image size {image_size} is not a multiple of {self.bottleneck.out_stride}, the stride of "
                f"the one-class embedding for encoder {cfg.encoder} with out_indices {tuple(cfg.out_indices)}"
            )

        self.text_prior: TextPrior | None = None
        if cfg.use_text_prior:
            if text_embedding is None:
                raise ConfigError(
                    "use_text_prior is on but no text embedding was given; compute one with "
                    "npgmf_edge.models.text_prior.compute_text_embedding, or turn the prior off"
                )
            self.text_prior = TextPrior(text_embedding, cfg.text_dim)

        self.atrous: nn.ModuleList | None = None
        self.quantizers: nn.ModuleList | None = None
        if cfg.use_codebooks:
            self.atrous = nn.ModuleList(
                AtrousBlock(c, cfg.codebook_dim, tuple(cfg.dilations)) for c in channels
            )
            self.quantizers = nn.ModuleList(
                VectorQuantizer(cfg.codebook_size, cfg.codebook_dim, cfg.vq_beta) for _ in channels
            )

        extra = (cfg.text_dim if cfg.use_text_prior else 0) + (cfg.codebook_dim if cfg.use_codebooks else 0)
        stages = []
        for level, (ch, stride) in enumerate(zip(channels, strides, strict=True)):
            in_ch = channels[level + 1] if level + 1 < len(channels) else self.bottleneck.out_channels
            stages.append(
                DecoderStage(
                    in_ch,
                    ch,
                    extra,
                    image_size // stride,
                    cfg.decoder_block,
                    cfg.decoder_depth,
                    cfg.lewin_depth,
                    cfg.lewin_heads,
                    cfg.window_size,
                    cfg.lewin_mlp_ratio,
                    name=f"decoder stage {level + 1} (stride {stride}, image size {image_size})",
                )
            )
        self.decoder = nn.ModuleList(stages)  # index k reproduces encoder level k (finest first)
        self.reconstruction = ReconstructionHead(channels[0], strides[0])

    def _quantize(self, feats: list[torch.Tensor], train: bool) -> tuple[list, list, list, list]:
        codes, indices, losses, latents = [], [], [], []
        if self.atrous is None or self.quantizers is None:
            return codes, indices, losses, latents
        for atrous, vq, f in zip(self.atrous, self.quantizers, feats, strict=True):
            z = atrous(f)
            if train:
                q, idx, loss = vq(z)
                losses.append(loss)
                latents.append(z.detach())
            else:
                q, idx = vq.quantize(z)
            codes.append(q)
            indices.append(idx)
        return codes, indices, losses, latents

    def _decode(self, feats: list[torch.Tensor], codes: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.bottleneck(feats)
        out: list[torch.Tensor] = [x] * len(self.decoder)
        for level in reversed(range(len(self.decoder))):
            x = self.decoder[level](x, self.text_prior, codes[level] if codes else None)
            out[level] = x
        return out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) raw RGB in [0, 255] -> logical anomaly map (B, 1, S, S)."""
        return self.map_from_features(self.encoder(pixels))

    def map_from_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 7 from an encoder pass already made (`InspectionNet` shares it with the structural branch)."""
        codes, _, _, _ = self._quantize(feats, train=False)
        return logical_anomaly_map(feats, self._decode(feats, codes), self.image_size)

    def forward_train(self, pixels: torch.Tensor) -> LogicalForward:
        """Everything the loss needs; the frozen encoder runs without autograd."""
        with torch.no_grad():
            target = self.encoder.normalize(pixels)  # the encoder's own input, normalised once
            feats = self.encoder.body(target)
        codes, indices, losses, latents = self._quantize(feats, train=True)
        dec = self._decode(feats, codes)
        return LogicalForward(
            encoder_features=feats,
            decoder_features=dec,
            reconstruction=self.reconstruction(dec[0]),
            target=target,
            vq_losses=losses,
            code_indices=indices,
            latents=latents,
        )

    @torch.no_grad()
    def init_codebooks(self, pixels: torch.Tensor, generator: torch.Generator) -> None:
        """Seed every codebook with random z vectors of `pixels` (before the first step: no dead start)."""
        if self.atrous is None or self.quantizers is None:
            return
        for atrous, vq, f in zip(self.atrous, self.quantizers, self.encoder(pixels), strict=True):
            vq.init_from(atrous(f), generator)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def codebook_usage(self) -> list[list[int]]:
        """Per level, how often each code was chosen since the last reset (empty without codebooks)."""
        if self.quantizers is None:
            return []
        return [[int(c) for c in vq.usage.tolist()] for vq in self.quantizers]
