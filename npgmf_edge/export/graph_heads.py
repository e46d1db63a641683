"""The single-graph bundle (`--knn graph`): kNN, fusion and smoothing appended to `InspectionNet`.

    pixels -> InspectionNet -> logical map, patch features
      patch features -> knn: |C|^2 - 2 q.C^T (one GEMM), ArgMin, Gather, ||q - c|| -> patch distances (FP32)
      -> fusion: bilinear Resize to S x S, Eq. 11 with the calibration as constants, separable Gaussian
         (OpenCV's kernel and its BORDER_REFLECT padding, as Gathers) -> fused map, image score = ReduceMax

This is the portable GPU path (there is no official FAISS GPU build for Jetson): one graph call maps an
image to its fused map and score. It computes what the runtime computes around a plain graph
(`knn.FaissNN` search + `postprocess.fuse`), so both kinds of bundle give the same numbers. The `knn` and
`fusion` submodules name the graph scopes that `export.precision` keeps in FP32.

Example:
    >>> net = GraphInspectionNet(run.net, coreset, calibration, image_size=128, grid=(16, 16))
    >>> fused_map, image_score, logical_map, structural_map = net(pixels)
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.calibration import Calibration
from npgmf_edge.models.inspection_net import InspectionNet
from npgmf_edge.postprocess import gaussian_kernel_size

GRAPH_OUTPUT_NAMES = ("fused_map", "image_score", "logical_map", "structural_map")


class KnnHead(nn.Module):
    """(B, D, h, w) patch features -> (B, h, w) Euclidean distance to the nearest coreset row."""

    def __init__(self, coreset: np.ndarray, grid: tuple[int, int]) -> None:
        super().__init__()
        bank = torch.from_numpy(np.ascontiguousarray(coreset, dtype=np.float32))
        self.register_buffer("bank", bank)  # (M, D)
        # -2 B^T: scaling by a power of two is exact, and it saves one pass over the (B, h*w, M) scores.
        self.register_buffer("bank_t_neg2", (-2.0 * bank).t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))  # (M,)
        self.grid = grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = features.flatten(2).transpose(1, 2)  # (B, h*w, D)
        # |q|^2 is the same for every bank row: the nearest row is the argmin of -2 q.b + |b|^2.
        nearest = (queries @ self.bank_t_neg2 + self.bank_sq).argmin(dim=-1)  # (B, h*w)
        # The distance itself exactly, as ||q - b|| (the expansion loses precision near 0; see knn.py).
        distances = torch.linalg.vector_norm(queries - self.bank[nearest], dim=-1)
        return distances.reshape(-1, *self.grid)


class FusionHead(nn.Module):
    """Patch distances + logical map -> fused, smoothed map and image score (Eq. 11, constants inside)."""

    def __init__(self, calibration: Calibration, image_size: int) -> None:
        super().__init__()
        c = calibration
        self.scale_structural = c.weight_structural / c.structural.std
        self.scale_logical = c.weight_logical / c.logical.std
        self.offset = -(self.scale_structural * c.structural.mean + self.scale_logical * c.logical.mean)
        self.image_size = image_size
        self.sigma = c.gaussian_sigma
        if self.sigma > 0:
            ksize = gaussian_kernel_size(self.sigma)
            kernel = torch.from_numpy(cv2.getGaussianKernel(ksize, self.sigma).astype(np.float32)[:, 0])
            self.register_buffer("kernel_rows", kernel.view(1, 1, ksize, 1))
            self.register_buffer("kernel_cols", kernel.view(1, 1, 1, ksize))
            pad = ksize // 2
            inner = np.arange(image_size)
            # OpenCV's BORDER_REFLECT mirrors with the edge pixel repeated: (c b a | a b c ... x y z | z y x).
            index = np.concatenate([inner[:pad][::-1], inner, inner[-pad:][::-1]]) if pad else inner
            self.register_buffer("pad_index", torch.from_numpy(index.copy()).long())

    def forward(self, patch_distances: torch.Tensor, logical_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = (self.image_size, self.image_size)
        structural = F.interpolate(patch_distances[:, None], size=size, mode="bilinear", align_corners=False)
        fused = self.scale_structural * structural + self.scale_logical * logical_map + self.offset
        if self.sigma > 0:
            fused = F.conv2d(fused.index_select(2, self.pad_index), self.kernel_rows)
            fused = F.conv2d(fused.index_select(3, self.pad_index), self.kernel_cols)
        return fused, fused.flatten(1).amax(dim=1), structural


class GraphInspectionNet(nn.Module):
    """pixels -> (fused map, image score, logical map, structural map): the whole detector in one graph."""

    def __init__(
        self, net: InspectionNet, coreset: np.ndarray, calibration: Calibration, image_size: int, grid: tuple
    ) -> None:
        super().__init__()
        self.net = net
        self.knn = KnnHead(coreset, tuple(grid))
        self.fusion = FusionHead(calibration, image_size)
        self.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logical_map, patch_features = self.net(pixels)
        fused, score, structural = self.fusion(self.knn(patch_features), logical_map)
        return fused, score, logical_map, structural
