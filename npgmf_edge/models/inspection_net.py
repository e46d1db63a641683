"""One network for inference: the frozen encoder runs once and feeds both branches (SPEC §5).

    pixels [0, 255] -> encoder (once) -> f_E^1..3
      -> logical branch (OCE, codebooks, text prior, decoder) -> logical map M_L (B, 1, S, S)   (Eq. 7)
      -> levels 2 and 3 -> PatchCore aggregation -> patch features (B, D, S/8, S/8)

What a run's torch detector computes and every exported graph contains (anomalib's `torch_model.py`
idea); a preset that does not share the encoder (`paper`) holds both here. The kNN search stays outside
(FAISS in the runtime), or `export.graph_heads` appends it.

Example:
    >>> net = InspectionNet(logical_net, patch_extractor, share_encoder=True)
    >>> logical_map, patch_features = net(torch.zeros(1, 3, 128, 128))
"""

from __future__ import annotations

import torch
from torch import nn

from npgmf_edge.errors import ConfigError
from npgmf_edge.models.logical.torch_model import NpgmfLogicalNet
from npgmf_edge.models.structural.features import PatchFeatureExtractor

OUTPUT_NAMES = ("logical_map", "patch_features")
INPUT_NAME = "pixels"


class InspectionNet(nn.Module):
    """pixels -> (logical map, patch features) for the branches a run has (both, for a calibrated run)."""

    def __init__(
        self,
        logical: NpgmfLogicalNet | None,
        structural: PatchFeatureExtractor | None,
        *,
        share_encoder: bool,
    ) -> None:
        super().__init__()
        if logical is None and structural is None:
            raise ConfigError("an InspectionNet needs at least one branch")
        self.logical = logical
        self.share_encoder = share_encoder and logical is not None and structural is not None
        self.structural = structural
        if self.share_encoder:
            # One encoder: drop the structural copy, keep its aggregation on the logical encoder's levels.
            self.structural_aggregator = structural.aggregator
            self.structural_levels = structural.levels
            self.structural = None
        if logical is not None and logical.text_prior is not None:
            logical.text_prior.freeze()
        self.eval()

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, present in zip(OUTPUT_NAMES, self.has_branches, strict=True) if present)

    @property
    def has_branches(self) -> tuple[bool, bool]:
        """(logical, structural) presence, in the order of `OUTPUT_NAMES`."""
        return self.logical is not None, self.share_encoder or self.structural is not None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, S, S) raw RGB -> the outputs named by `output_names`, in that order."""
        outputs: list[torch.Tensor] = []
        if self.share_encoder:
            feats = self.logical.encoder(pixels)
            outputs.append(self.logical.map_from_features(feats))
            levels = [feats[i] for i in self.structural_levels]
            outputs.append(self.structural_aggregator(levels))
            return tuple(outputs)
        if self.logical is not None:
            outputs.append(self.logical(pixels))
        if self.structural is not None:
            outputs.append(self.structural(pixels))
        return tuple(outputs)
