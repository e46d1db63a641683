"""The logical branch's training loss: feature reproduction + image reconstruction + VQ.

total = w_cos * sum_k mean(1 - cos(f_E^k, f_D^k)) + w_recon * MSE(recon, x_norm) + w_vq * sum_k L_VQ^k

The reconstruction target is the ImageNet-normalised input (the encoder's own input, per-channel unit
scale), so the MSE term has the same order of magnitude as the cosine terms at weight 1; L_VQ^k is
||sg[z]-e||^2 + beta ||z-sg[e]||^2 (mean over elements).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npgmf_edge.config import LogicalConfig
from npgmf_edge.models.logical.anomaly_map import cosine_loss
from npgmf_edge.models.logical.torch_model import LogicalForward


@dataclass
class LogicalLoss:
    """The weighted total (to backpropagate) and its unweighted terms (to report)."""

    total: torch.Tensor
    cos: torch.Tensor
    recon: torch.Tensor
    vq: torch.Tensor

    def terms(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("total", "cos", "recon", "vq")}


def logical_loss(out: LogicalForward, cfg: LogicalConfig) -> LogicalLoss:
    cos = cosine_loss(out.encoder_features, out.decoder_features)
    recon = F.mse_loss(out.reconstruction, out.target)
    vq = sum(out.vq_losses, torch.zeros(()))
    total = cfg.loss_weight_cos * cos + cfg.loss_weight_recon * recon + cfg.loss_weight_vq * vq
    return LogicalLoss(total=total, cos=cos, recon=recon, vq=vq)
