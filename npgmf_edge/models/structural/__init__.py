"""Structural branch (PatchCore, Roth et al. CVPR 2022): patch features and coreset sampler.

The nearest-neighbour scorers live in `npgmf_edge.knn` (numpy + faiss only, shared with the runtime).

- `features`: `PatchFeatureAggregator` (levels 2+3 -> D-dim patch features), `PatchFeatureExtractor`
  (frozen encoder + aggregator; exported as structural.onnx).
- `sampler`: `IdentitySampler`, `RandomSampler`, `GreedyCoresetSampler` (+ `LoopGreedyCoresetSampler`,
  the plain-loop reference).
- `torch_model`: `StructuralDetector` (extractor + fitted scorer -> patch scores, anomaly map).
"""

from npgmf_edge.models.structural.features import (
    PatchFeatureAggregator,
    PatchFeatureExtractor,
    adaptive_pool_matrix,
)
from npgmf_edge.models.structural.sampler import (
    BaseSampler,
    GreedyCoresetSampler,
    IdentitySampler,
    LoopGreedyCoresetSampler,
    RandomSampler,
)
from npgmf_edge.models.structural.torch_model import (
    StructuralDetector,
    build_patch_extractor,
    scores_to_map,
)

__all__ = [
    "BaseSampler",
    "GreedyCoresetSampler",
    "IdentitySampler",
    "LoopGreedyCoresetSampler",
    "PatchFeatureAggregator",
    "PatchFeatureExtractor",
    "RandomSampler",
    "StructuralDetector",
    "adaptive_pool_matrix",
    "build_patch_extractor",
    "scores_to_map",
]
