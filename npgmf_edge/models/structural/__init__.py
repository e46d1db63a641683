"""Structural branch (PatchCore, Roth et al. CVPR 2022): patch features, coreset sampler, kNN scorers.

- `features`: `PatchFeatureAggregator` (levels 2+3 -> D-dim patch features), `PatchFeatureExtractor`
  (frozen encoder + aggregator; exported as structural.onnx).
- `sampler`: `IdentitySampler`, `RandomSampler`, `GreedyCoresetSampler` (+ `LoopGreedyCoresetSampler`,
  the plain-loop reference).
- `nn`: `NearestNeighbourScorer` with `FaissNN`, `ApproximateFaissNN` (IVF) and `BruteForceNN`.
- `torch_model`: `StructuralDetector` (extractor + fitted scorer -> patch scores, anomaly map).
"""

from npgmf_edge.models.structural.features import (
    PatchFeatureAggregator,
    PatchFeatureExtractor,
    adaptive_pool_matrix,
)
from npgmf_edge.models.structural.nn import (
    ApproximateFaissNN,
    BruteForceNN,
    FaissNN,
    NearestNeighbourScorer,
    create_scorer,
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
    "ApproximateFaissNN",
    "BaseSampler",
    "BruteForceNN",
    "FaissNN",
    "GreedyCoresetSampler",
    "IdentitySampler",
    "LoopGreedyCoresetSampler",
    "NearestNeighbourScorer",
    "PatchFeatureAggregator",
    "PatchFeatureExtractor",
    "RandomSampler",
    "StructuralDetector",
    "adaptive_pool_matrix",
    "build_patch_extractor",
    "create_scorer",
    "scores_to_map",
]
