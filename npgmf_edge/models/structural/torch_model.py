"""The structural detector as a plain object: patch-feature extractor + fitted nearest-neighbour scorer.

Score of a patch = Euclidean distance to its nearest coreset patch (k = 1, PatchCore). The structural map
is the grid of patch scores upsampled bilinearly to input resolution; Gaussian smoothing belongs to
fusion (SPEC §2.3), not here. Usable without any training code: `load_structural(run / "structural")`
gives one of these.

Example:
    >>> detector = StructuralDetector(extractor, FaissNN().fit(coreset))
    >>> detector.anomaly_map(pixels).shape   # pixels: (B, 3, S, S) raw [0, 255]
    torch.Size([B, 1, S, S])
"""

from __future__ import annotations

import timm
import torch

from npgmf_edge.config import NpgmfConfig
from npgmf_edge.errors import ConfigError
from npgmf_edge.knn import NearestNeighbourScorer
from npgmf_edge.models.backbone import FrozenEncoder
from npgmf_edge.models.structural.features import PatchFeatureExtractor, build_aggregator
from npgmf_edge.postprocess import distances_to_map, image_scores, patch_distances

STRUCTURAL_LEVELS = (2, 3)  # timm out_indices of the two levels the branch uses (strides 8 and 16)


def build_patch_extractor(cfg: NpgmfConfig, *, weights_follow: bool = False) -> PatchFeatureExtractor:
    """The extractor a config describes: on the logical branch's encoder with
    `structural.share_logical_encoder`, else `structural.encoder` with out_indices (2, 3).
    `weights_follow=True` builds random weights quietly because the caller loads saved ones next."""
    s = cfg.structural
    s.validate()
    if s.share_logical_encoder:
        name, out_indices = cfg.logical.encoder, tuple(cfg.logical.out_indices)
        weights = cfg.weights.encoder_weights()
        missing = [i for i in STRUCTURAL_LEVELS if i not in out_indices]
        if missing:
            raise ConfigError(
                f"structural.share_logical_encoder needs levels {STRUCTURAL_LEVELS} among "
                f"logical.out_indices {out_indices}; add them or set share_logical_encoder to false"
            )
    else:
        name, out_indices = s.encoder, STRUCTURAL_LEVELS
        weights = cfg.weights.encoder_weights(structural=True)
    if weights_follow:
        encoder = FrozenEncoder(name, out_indices, pretrained=False, warn_random=False)
    else:
        encoder = FrozenEncoder(name, out_indices, pretrained=cfg.weights.pretrained, weights=weights)
    levels = tuple(out_indices.index(i) for i in STRUCTURAL_LEVELS)
    channels = [encoder.channels[i] for i in levels]
    aggregator = build_aggregator(s.aggregation, channels, s.pretrain_embed_dim, s.embed_dim, s.patch_size)
    return PatchFeatureExtractor(encoder, aggregator, levels).eval()


def patch_feature_dim(cfg: NpgmfConfig) -> int:
    """D of the patch features a config describes, without building weights: `embed_dim` for the
    reference aggregation, the two levels' channels for `local_mean` (the encoder built on the meta
    device, which allocates nothing)."""
    s = cfg.structural
    if s.aggregation == "reference":
        return s.embed_dim
    name = cfg.logical.encoder if s.share_logical_encoder else s.encoder
    with torch.device("meta"):
        body = timm.create_model(name, pretrained=False, features_only=True, out_indices=STRUCTURAL_LEVELS)
    return int(sum(body.feature_info.channels()))


class StructuralDetector:
    """Extractor + fitted scorer: patch scores and the structural anomaly map."""

    def __init__(self, extractor: PatchFeatureExtractor, scorer: NearestNeighbourScorer) -> None:
        self.extractor = extractor.eval()
        self.scorer = scorer

    @property
    def device(self) -> torch.device:
        return next(self.extractor.parameters()).device

    def to(self, device: torch.device | str) -> StructuralDetector:
        self.extractor.to(device)
        return self

    @torch.no_grad()
    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) raw pixels -> (B, D, h, w) patch features."""
        return self.extractor(pixels.to(self.device, torch.float32))

    def patch_scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) raw pixels -> (B, h, w) float32 patch scores (on `pixels`' device)."""
        features = self.patch_features(pixels).float().cpu().numpy()
        return torch.from_numpy(patch_distances(features, self.scorer)).to(pixels.device)

    def anomaly_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) raw pixels -> (B, 1, H, W) float32 structural map at input resolution: the post
        stage's (`postprocess.distances_to_map`)."""
        maps = distances_to_map(self.patch_scores(pixels).cpu().numpy(), tuple(pixels.shape[-2:]))
        return torch.from_numpy(maps)[:, None].to(pixels.device)

    def image_scores(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B,) image scores: the maximum of each structural map."""
        return torch.from_numpy(image_scores(self.anomaly_map(pixels)[:, 0].cpu().numpy()))
