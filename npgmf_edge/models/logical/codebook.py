"""Normal multi-level codebooks (NMC): an atrous block per level and a vector quantiser (VQ-VAE style).

`AtrousBlock`: encoder features f_E^k -> z_k by parallel dilated 3x3 convs fused by a 1x1 conv.
`VectorQuantizer` snaps every z_k vector to the nearest of K learnable entries (straight-through
gradients, van den Oord et al. 2017) by one MatMul, ArgMin and Gather, so the exported graph holds the
codebook as a constant. Usage is counted in a persistent buffer (dead codes show in the saved weights and
summary); `restart_dead_codes` re-seeds them from recent z vectors.

Example:
    >>> vq = VectorQuantizer(num_codes=16, dim=8)
    >>> q, idx = vq.quantize(torch.randn(2, 8, 4, 4))
    >>> q.shape, idx.shape
    (torch.Size([2, 8, 4, 4]), torch.Size([2, 4, 4]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.models.logical.blocks import conv_bn_relu


class AtrousBlock(nn.Module):
    """Parallel 3x3 convs with the given dilations (conv+BN+ReLU each), concatenated, fused by 1x1 -> z."""

    def __init__(self, in_ch: int, out_ch: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_bn_relu(in_ch, out_ch, 3, dilation=d) for d in dilations)
        self.fuse = nn.Conv2d(out_ch * len(dilations), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class VectorQuantizer(nn.Module):
    """K learnable D-dim codes; nearest-code quantisation, VQ loss, usage tracking."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.codebook = nn.Parameter(torch.randn(num_codes, dim))
        self.register_buffer("usage", torch.zeros(num_codes))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D, H, W) -> (nearest codes (B, D, H, W), indices (B, H, W)); MatMul, ArgMin, Gather."""
        z_last = z.permute(0, 2, 3, 1)  # (B, H, W, D)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code, so argmin skips it.
        dist = (self.codebook * self.codebook).sum(dim=1) - 2.0 * torch.matmul(z_last, self.codebook.t())
        indices = dist.argmin(dim=-1)
        codes = F.embedding(indices, self.codebook).permute(0, 3, 1, 2)
        return codes, indices

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step: (straight-through codes, indices, VQ loss). Counts usage in training mode."""
        codes, indices = self.quantize(z)
        codebook_loss = F.mse_loss(codes, z.detach())
        commitment_loss = F.mse_loss(z, codes.detach())
        if self.training:
            with torch.no_grad():
                self.usage += torch.bincount(indices.flatten(), minlength=self.num_codes).to(self.usage)
        straight_through = z + (codes - z).detach()
        return straight_through, indices, codebook_loss + self.beta * commitment_loss

    @torch.no_grad()
    def reset_usage(self) -> None:
        self.usage.zero_()

    def dead_codes(self) -> torch.Tensor:
        """Indices of codes never chosen since the last `reset_usage`."""
        return torch.nonzero(self.usage == 0).flatten()

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Set the codes to K distinct z vectors (B, D, H, W) picked at random: no collapse at the start."""
        pool = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        pick = torch.randperm(pool.shape[0], generator=generator)[: self.num_codes]
        self.codebook[: len(pick)] = pool[pick]

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, generator: torch.Generator) -> int:
        """Re-seed unused codes from random z vectors (B, D, H, W); returns how many were restarted."""
        dead = self.dead_codes()
        if dead.numel() == 0:
            return 0
        pool = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
        self.codebook[dead] = pool[pick]
        return int(dead.numel())
