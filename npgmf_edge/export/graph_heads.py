"""The single-graph bundle (`--knn graph`): kNN, fusion and smoothing appended to `InspectionNet`.

    pixels -> InspectionNet -> logical map, patch features
      patch features -> knn: |C|^2 - 2 q.C^T (one GEMM), ArgMin, Gather, ||q - c|| -> patch distances (FP32)
         (or, search "int8", that GEMM in INT8, TopK candidates and ||q - c|| over them: `KnnHead`)
      -> fusion: bilinear Resize to S x S, Eq. 11 with the calibration as constants, separable Gaussian
         (OpenCV's kernel and its BORDER_REFLECT padding, as Gathers) -> fused map, image score = ReduceMax
         (fusion level "image": the weighted sum of each smoothed branch map's ReduceMax, standardised)

The portable GPU path (no official FAISS GPU build for Jetson). It transcribes `postprocess`, so both
kinds of bundle give the same numbers; its `knn` and `fusion` scopes are what `export.precision` keeps FP32.

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
from npgmf_edge.export.int8_safety import SAFE_WEIGHT_MAX
from npgmf_edge.models.inspection_net import InspectionNet
from npgmf_edge.postprocess import gaussian_kernel_size

GRAPH_OUTPUT_NAMES = ("fused_map", "image_score", "logical_map", "structural_map")


KNN_SEARCHES = ("exact", "int8")
DEFAULT_CANDIDATES = 4  # int8 search: coreset rows re-ranked exactly per patch


class KnnHead(nn.Module):
    """(B, D, h, w) patch features -> (B, h, w) Euclidean distance to the nearest coreset row.

    search "exact": one FP32 GEMM |b|^2 - 2 q.b over the whole coreset, ArgMin, exact ||q - b||.
    search "int8":  the same GEMM in INT8 (`Int8Scores`, exact with or without VNNI), its `candidates`
                    best rows by TopK, then ||q - b|| in FP32 for those only: exact to a real coreset
                    row, so it can only overestimate; an anomalous patch is never hidden.
    """

    def __init__(
        self,
        coreset: np.ndarray,
        grid: tuple[int, int],
        search: str = "exact",
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        super().__init__()
        if search not in KNN_SEARCHES:
            raise ValueError(f"kNN search must be one of {KNN_SEARCHES}, got {search!r}")
        bank = torch.from_numpy(np.ascontiguousarray(coreset, dtype=np.float32))
        self.register_buffer("bank", bank)  # (M, D)
        self.grid, self.search, self.candidates = grid, search, min(candidates, len(bank))
        if search == "exact":
            self.register_buffer("bank_sq", (bank * bank).sum(dim=1))  # (M,)
            # -2 B^T: scaling by a power of two is exact, and saves one pass over the (B, h*w, M) scores.
            self.register_buffer("bank_t_neg2", (-2.0 * bank).t().contiguous())  # (D, M)
            return
        # Distances do not change when queries and rows shift alike: the INT8 pass works on features
        # centred on the coreset mean, so its 256 levels span their spread rather than their offset.
        center = bank.mean(dim=0)
        centred = bank - center
        self.register_buffer("center", center)
        self.register_buffer("centred_sq", (centred * centred).sum(dim=1))
        # Queries share the coreset's range (its rows are training patches): u8 with a zero point; a value
        # outside the range saturates, which can only change the candidates, not the distance's exactness.
        low, high = min(0.0, float(centred.min())), max(0.0, float(centred.max()))
        self.query_scale = max(high - low, 1e-12) / 255.0
        self.query_zero = round(-low / self.query_scale)
        weights = (-2.0 * centred).t().contiguous()  # (D, M)
        # 7-bit coreset columns: u8 x s8 pair sums stay below int16's limit without VNNI (`int8_safety`).
        bank_scale = float(weights.abs().max()) / SAFE_WEIGHT_MAX or 1.0
        self.register_buffer("weights_q", torch.round(weights / bank_scale).to(torch.int8))
        # The product of the two scales as the float32 that onnxruntime multiplies by.
        self.score_scale = float(np.float32(self.query_scale) * np.float32(bank_scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.distances(features.flatten(2).transpose(1, 2)).reshape(-1, *self.grid)

    def distances(self, queries: torch.Tensor) -> torch.Tensor:
        """(B, N, D) queries -> (B, N) distances to their nearest coreset row."""
        # |q|^2 is the same for every bank row: the nearest row is the argmin of -2 q.b + |b|^2.
        # The distance itself is computed exactly, as ||q - b|| (the expansion loses precision near 0).
        if self.search == "exact":
            nearest = (queries @ self.bank_t_neg2 + self.bank_sq).argmin(dim=-1)  # (B, N)
            return torch.linalg.vector_norm(queries - self.bank[nearest], dim=-1)
        scores = Int8Scores.apply(
            queries - self.center, self.weights_q, self.centred_sq, self.query_scale, self.query_zero,
            self.score_scale,
        )  # fmt: skip
        candidates = scores.topk(self.candidates, dim=-1, largest=False).indices  # (B, N, K)
        distances = torch.linalg.vector_norm(queries[:, :, None, :] - self.bank[candidates], dim=-1)
        return distances.amin(dim=-1)


class Int8Scores(torch.autograd.Function):
    """|b|^2 - 2 q.b with u8 queries and s8 coreset columns: QuantizeLinear -> MatMulInteger (int32 sums;
    onnxruntime's u8 x s8 kernel uses VNNI where the CPU has it) -> Cast -> Mul -> Add in ONNX. The torch
    forward computes the same integers exactly (float64 sums of int products stay below 2^53)."""

    @staticmethod
    def forward(ctx, queries, bank_q, bank_sq, query_scale: float, query_zero: int, score_scale: float):
        # QuantizeLinear: x / scale, round half to even (torch.round), add the zero point, saturate to u8.
        # (The constants are tensors: the exporter's peephole pass breaks on a traced "x + 0".)
        scale, zero = torch.full((), query_scale), torch.full((), float(query_zero))
        quantized = (torch.round(queries / scale) + zero).clamp(0, 255)
        sums = (quantized - zero).double() @ bank_q.double()
        return sums.float() * torch.full((), score_scale) + bank_sq

    @staticmethod
    def symbolic(g, queries, bank_q, bank_sq, query_scale, query_zero, score_scale):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        zero = const(query_zero, torch.uint8)
        quantized = g.op("QuantizeLinear", queries, const(query_scale, torch.float32), zero)
        sums = g.op("MatMulInteger", quantized, bank_q, zero)
        as_float = g.op("Cast", sums, to_i=1)  # TensorProto.FLOAT
        return g.op("Add", g.op("Mul", as_float, const(score_scale, torch.float32)), bank_sq)


class FusionHead(nn.Module):
    """Patch distances + logical map -> fused, smoothed map and image score: `postprocess.post_process`
    with the calibration as constants (Eq. 11; the image score max of the fused map, or at fusion level
    "image" the weighted sum of the standardised branch image scores)."""

    def __init__(self, calibration: Calibration, image_size: int) -> None:
        super().__init__()
        c = calibration
        self.scale_structural = c.weight_structural / c.structural.std
        self.scale_logical = c.weight_logical / c.logical.std
        self.offset = -(self.scale_structural * c.structural.mean + self.scale_logical * c.logical.mean)
        self.image_level = c.fusion_level == "image"
        if self.image_level:
            si, li = c.structural_image, c.logical_image
            self.image_scale_structural = c.weight_structural / si.std
            self.image_scale_logical = c.weight_logical / li.std
            self.image_offset = -(self.image_scale_structural * si.mean + self.image_scale_logical * li.mean)
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

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian of (B, 1, S, S) maps, as `postprocess.smooth`."""
        if self.sigma <= 0:
            return maps
        maps = F.conv2d(maps.index_select(2, self.pad_index), self.kernel_rows)
        return F.conv2d(maps.index_select(3, self.pad_index), self.kernel_cols)

    def forward(self, patch_distances: torch.Tensor, logical_map: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = (self.image_size, self.image_size)
        structural = F.interpolate(patch_distances[:, None], size=size, mode="bilinear", align_corners=False)
        if not self.image_level:
            fused = self.smooth(
                self.scale_structural * structural + self.scale_logical * logical_map + self.offset
            )
            return fused, fused.flatten(1).amax(dim=1), structural
        # Smoothing is linear with a kernel summing to 1: one pass over both branches serves the fused map
        # and the branch image scores (as `postprocess.post_process` does it).
        batch = structural.shape[0]
        smoothed = self.smooth(torch.cat([structural, logical_map], dim=0))
        smooth_s, smooth_l = smoothed[:batch], smoothed[batch:]
        fused = self.scale_structural * smooth_s + self.scale_logical * smooth_l + self.offset
        score = (
            self.image_scale_structural * smooth_s.flatten(1).amax(dim=1)
            + self.image_scale_logical * smooth_l.flatten(1).amax(dim=1)
            + self.image_offset
        )
        return fused, score, structural


class GraphInspectionNet(nn.Module):
    """pixels -> (fused map, image score, logical map, structural map): the whole detector in one graph."""

    def __init__(
        self,
        net: InspectionNet,
        coreset: np.ndarray,
        calibration: Calibration,
        image_size: int,
        grid: tuple,
        search: str = "exact",
    ) -> None:
        super().__init__()
        self.net = net
        self.knn = KnnHead(coreset, tuple(grid), search)
        self.fusion = FusionHead(calibration, image_size)
        self.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logical_map, patch_features = self.net(pixels)
        fused, score, structural = self.fusion(self.knn(patch_features), logical_map)
        return fused, score, logical_map, structural


class HeadSearch:
    """A `KnnHead` behind the `search(queries, k=1)` call of `postprocess.structural_maps`, so an
    export calibrates on the distances its graph computes (the int8 search may overestimate a few)."""

    def __init__(self, head: KnnHead, chunk: int = 4096) -> None:
        self.head, self.chunk = head.eval(), chunk  # chunks bound the (chunk, M) score matrix

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, None]:
        if k != 1:
            raise ValueError("the graph's kNN head finds the nearest row only (k = 1)")
        parts = [
            self.head.distances(torch.from_numpy(queries[i : i + self.chunk])[None])[0].numpy()
            for i in range(0, len(queries), self.chunk)
        ]
        return np.concatenate(parts)[:, None], None
