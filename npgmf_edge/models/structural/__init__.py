"""Structural branch (PatchCore, Roth et al. CVPR 2022): patch features and coreset sampler.

The nearest-neighbour scorers live in `npgmf_edge.knn` (numpy + faiss only, shared with the runtime).

- `features`: `PatchFeatureAggregator` (PatchCore's reference aggregation of levels 2+3) and
  `LocalMeanAggregator` (anomalib's), `build_aggregator` (the one a config names), `PatchFeatureExtractor`
  (frozen encoder + aggregator; the patch-feature part of each bundle graph, `model.<precision>.onnx`).
- `sampler`: `IdentitySampler`, `RandomSampler`, `GreedyCoresetSampler` (+ `LoopGreedyCoresetSampler`,
  the plain-loop reference).
- `torch_model`: `StructuralDetector` (extractor + fitted scorer -> patch scores, anomaly map).
"""

from npgmf_edge.models.structural.sampler import GreedyCoresetSampler
from npgmf_edge.models.structural.torch_model import StructuralDetector, build_patch_extractor

__all__ = ["GreedyCoresetSampler", "StructuralDetector", "build_patch_extractor"]
