"""npgmf-edge: anomaly inspection from good images only, built for edge GPUs.

Two branches (SPEC §2): a reverse-distillation logical branch guided by a CLIP text prior and
vector-quantised normal codebooks (NPGMF, Xu et al. 2025), and a PatchCore structural branch.
"""

__version__ = "0.1.0"
