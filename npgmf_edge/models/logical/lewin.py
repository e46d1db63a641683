"""LeWin transformer blocks (Uformer, Wang et al., CVPR 2022) for the multi-semantic fusion.

A LeWin block: pre-norm window self-attention with a learned relative position bias, then a LeFF
feed-forward (linear, depthwise 3x3 conv, linear; GELU after the first two); blocks alternate plain and
shifted windows (by window / 2, as Swin). Built for one fixed grid: static reshapes (batch axis -1 only),
`torch.roll` shifts, precomputed mask and position index, so the exported graph has static shapes.

Example:
    >>> stage = LeWinStage(dim=32, resolution=8, depth=2, heads=2, window_size=4, name="stage 3")
    >>> stage(torch.zeros(2, 32, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.errors import ConfigError

MASK_VALUE = -100.0  # added to attention logits across shifted-window region borders (fp16-safe)


def window_partition(x: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order."""
    channels = x.shape[-1]
    x = x.reshape(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into a ((2w-1)^2)-row bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask: 0 within a region, MASK_VALUE between regions that the roll made adjacent."""
    regions = torch.zeros(1, height, width, 1)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, rows, cols, :] = label
            label += 1
    ids = window_partition(regions, window, height, width).squeeze(-1)  # (nW, N)
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.dim = dim
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B * nW, N, C); mask (nW, N, N) or None."""
        tokens, channels = self.window * self.window, self.dim  # static: the graph has no shape arithmetic
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B * nW, heads, N, head_dim)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(tokens, tokens, self.heads)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.reshape(-1, windows, self.heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.heads, tokens, tokens)
        out = torch.matmul(attn.softmax(dim=-1), v)  # (B * nW, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(-1, tokens, channels))


class LeFF(nn.Module):
    """Locally-enhanced feed-forward on a (B, H, W, C) grid: linear, depthwise 3x3 conv, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        x = F.gelu(self.dwconv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return self.fc2(x)


class LeWinBlock(nn.Module):
    """x + W-MSA(LN(x)) (optionally on cyclically shifted windows), then x + LeFF(LN(x)); (B, H, W, C)."""

    def __init__(
        self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.leff = LeFF(dim, max(int(dim * mlp_ratio), 1))
        if shift > 0:
            self.register_buffer(
                "attn_mask", shifted_window_mask(resolution, resolution, window, shift), persistent=False
            )
        else:
            self.attn_mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, window, shift = self.resolution, self.window, self.shift
        y = self.norm1(x)
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = window_reverse(
            self.attn(window_partition(y, window, size, size), self.attn_mask), window, size, size
        )
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y
        return x + self.leff(self.norm2(x))


class LeWinStage(nn.Module):
    """`depth` LeWin blocks on a (B, C, H, W) map of a fixed square grid, alternating window shifts (none
    for a grid one window wide); ConfigError naming the stage for a grid or channels that do not divide."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        heads: int,
        window_size: int,
        mlp_ratio: float = 2.0,
        name: str = "LeWin stage",
    ) -> None:
        super().__init__()
        if window_size < 1 or resolution % window_size != 0:
            raise ConfigError(
                f"{name}: its {resolution}x{resolution} grid is not divisible by window_size {window_size}; "
                "choose an image size or window size so that every decoder stage's grid is a multiple of it"
            )
        if heads < 1 or dim % heads != 0:
            raise ConfigError(f"{name}: {dim} channels cannot be split into lewin_heads={heads} heads")
        shift = window_size // 2 if resolution > window_size else 0
        self.blocks = nn.ModuleList(
            LeWinBlock(dim, resolution, heads, window_size, shift if i % 2 else 0, mlp_ratio)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)
