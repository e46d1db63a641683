"""Memory-bank subsampling: greedy k-center coreset (PatchCore, Roth et al. CVPR 2022) and simple variants.

As the PatchCore reference: one small class per idea, each variant overriding one method.

- `IdentitySampler`: keeps the whole bank (ratio 1); `RandomSampler`: a uniform random subset.
- `GreedyCoresetSampler`: greedy k-center (Gonzalez 1985; Sener & Savarese 2018) on a seeded Gaussian
  random projection to `projection_dim`: a seeded random first pick, then always the point farthest from
  its nearest pick (ties: lowest index). Fast, memory-light and exact.
- `LoopGreedyCoresetSampler`: the same rule as a plain per-pick loop over the whole bank (as anomalib's
  `KCenterGreedy`); the reference for tests and `scripts/bench_coreset.py`.

Why the fast sampler is fast: every point remembers its nearest pick a and the distance to it, and a new
pick c can only take x over if d(a, c) < 2 d(x, a) (triangle inequality), so one matrix-vector product
against the picks decides which few points to measure (about 2% of a 102k patch bank late in a run); a
chunked full pass is used when most would survive. Nothing N x N is built. docs/DESIGN.md ("Structural
branch") explains why the picks stay identical to the loop's.

Example:
    >>> sampler = GreedyCoresetSampler(ratio=0.1, projection_dim=128, seed=0)
    >>> coreset = sampler.run(torch.randn(5000, 256))
    >>> coreset.shape
    torch.Size([500, 256])
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from npgmf_edge.errors import ConfigError
from npgmf_edge.progress import Reporter

DEFAULT_CHUNK_SIZE = 16384  # rows per chunk in full-bank passes: 16384 x 128 float32 = 8 MiB
DENSE_FRACTION = 2  # measure the whole bank when over half of it cannot be pruned
# The pick loop is thousands of small, latency-bound ops: on CPU one thread runs it fastest, and on a
# shared or oversubscribed machine intra-op threads make it up to 20x slower (docs/BENCHMARKS.md).
GREEDY_CPU_THREADS = 1
MAX_BACKOFF = 64  # at most this many picks without trying to prune (banks without structure)
# Skip x when d(owner, new)^2 >= 4 (1 + 1e-4) d(x, owner)^2: the slack keeps float rounding from ever
# skipping a point the plain loop would move.
PRUNE_FACTOR = 4.0 * (1.0 + 1e-4)


def validate_ratio(ratio: float) -> float:
    """The coreset ratio as a float in (0, 1]; ConfigError otherwise."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"coreset ratio must be a number in (0, 1], got {ratio!r}") from None
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ConfigError(f"coreset ratio must be in (0, 1], got {ratio!r}")
    return value


def coreset_size(n_points: int, ratio: float) -> int:
    """How many points a ratio keeps: floor(n * ratio), at least 1 (PatchCore and anomalib round down)."""
    return max(1, min(n_points, int(n_points * ratio)))


def random_projection(features: torch.Tensor, dim: int, seed: int, chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Project (N, D) features to (N, dim) with a seeded Gaussian matrix (Johnson-Lindenstrauss).

    Returns the features unchanged when `dim >= D`. Computed in chunks of rows, in float32.
    """
    n, d = features.shape
    if dim >= d:
        return features.float()
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(d, dim, generator=generator) / dim**0.5
    matrix = matrix.to(features.device)
    out = torch.empty(n, dim, device=features.device)
    for start in range(0, n, chunk_size):
        out[start : start + chunk_size] = features[start : start + chunk_size].float() @ matrix
    return out


class BaseSampler(abc.ABC):
    """Chooses which rows of a memory bank to keep. `run` returns them, `select` their indices."""

    def __init__(self, ratio: float) -> None:
        self.ratio = validate_ratio(ratio)

    @abc.abstractmethod
    def select(self, features: torch.Tensor) -> torch.Tensor:
        """Indices (int64, in pick order) of the rows of `features` (N, D) to keep."""

    def run(self, features: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """The kept rows of `features` (N, D), as the same type (tensor or array)."""
        if isinstance(features, np.ndarray):
            return self.run(torch.from_numpy(features)).numpy()
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"expected a non-empty (N, D) memory bank, got shape {tuple(features.shape)}")
        return features[self.select(features).to(features.device)]


class IdentitySampler(BaseSampler):
    """Keeps every row."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def select(self, features: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(features))


class RandomSampler(BaseSampler):
    """A seeded uniform random subset of floor(N * ratio) rows."""

    def __init__(self, ratio: float, seed: int = 0) -> None:
        super().__init__(ratio)
        self.seed = seed

    def select(self, features: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(features)
        return torch.randperm(n, generator=generator)[: coreset_size(n, self.ratio)]


class GreedyCoresetSampler(BaseSampler):
    """Exact greedy k-center coreset on a random projection, accelerated by triangle-inequality pruning."""

    def __init__(
        self,
        ratio: float,
        projection_dim: int = 128,
        seed: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = False,
        threads: int | None = GREEDY_CPU_THREADS,
    ) -> None:
        super().__init__(ratio)
        if projection_dim < 1:
            raise ConfigError(f"coreset projection dimension must be >= 1, got {projection_dim}")
        self.projection_dim = projection_dim
        self.seed = seed
        self.chunk_size = chunk_size
        self.progress = progress
        self.threads = threads  # torch CPU threads during the pick loop; None: leave torch's setting

    def select(self, features: torch.Tensor) -> torch.Tensor:
        n = len(features)
        k = coreset_size(n, self.ratio)
        if k >= n:
            return torch.arange(n)
        with torch.no_grad():
            projected = random_projection(features, self.projection_dim, self.seed, self.chunk_size)
            first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(self.seed)))
            with _intra_op_threads(self.threads if projected.device.type == "cpu" else None):
                picks = self._greedy_indices(projected, k, first)
        return picks.cpu()

    def _greedy_indices(self, points: torch.Tensor, k: int, first: int) -> torch.Tensor:
        """k indices picked farthest-first from (N, d) `points`, starting with `first`."""
        n = len(points)
        device = points.device
        picks = torch.empty(k, dtype=torch.long, device=device)
        centers = torch.empty(k, points.shape[1], device=device)
        # Squared distance of every point to its nearest pick so far, and which pick that is.
        min_sq = torch.empty(n, device=device)
        owner = torch.zeros(n, dtype=torch.long, device=device)

        center_norms = torch.empty(k, device=device)  # |c|^2 of each pick
        # |a|^2 + |c|^2 - 2 a.c is off by at most (2d + 8) 2^-24 (|a|^2 + |c|^2) in float32: subtracting
        # that gives a lower bound of d(a, c)^2, so pruning on it never skips a point it should not.
        shrink = 1.0 - (2 * points.shape[1] + 8) * 2.0**-24

        picks[0] = first
        centers[0] = points[first]
        center_norms[0] = centers[0] @ centers[0]
        for start in range(0, n, self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            min_sq[rows] = _sq_dist(points[rows], centers[0])
        min_sq[first] = 0.0

        backoff, next_try = 1, 1  # after a pick with little to prune, skip the pruning test for a while
        with Reporter("coreset", k - 1, unit="picks", enabled=self.progress) as progress:
            for i in range(1, k):
                new = int(torch.argmax(min_sq))
                picks[i] = new
                centers[i] = points[new]
                center_norms[i] = centers[i] @ centers[i]
                maybe = None
                if i >= next_try:
                    # x can only get closer to the new center c than to its owner a if d(a, c) < 2 d(x, a).
                    norms = center_norms[:i] + center_norms[i]
                    center_sq = shrink * norms - 2.0 * (centers[:i] @ centers[i])
                    maybe = center_sq[owner] < PRUNE_FACTOR * min_sq
                    if int(maybe.sum()) * DENSE_FRACTION >= n:
                        maybe, backoff, next_try = None, min(2 * backoff, MAX_BACKOFF), i + backoff
                    else:
                        backoff = 1
                if maybe is None:  # little to prune: a plain chunked pass over the bank
                    self._update_dense(points, centers[i], i, min_sq, owner)
                else:
                    self._update_points(points, centers[i], i, torch.nonzero(maybe).squeeze(1), min_sq, owner)
                min_sq[new] = 0.0
                owner[new] = i
                progress.advance()
        return picks

    def _update_dense(self, points, center, label, min_sq, owner) -> None:
        """Measure every point against the new center, chunk by chunk."""
        for start in range(0, len(points), self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            dist = _sq_dist(points[rows], center)
            closer = dist < min_sq[rows]
            owner[rows] = owner[rows].masked_fill(closer, label)
            min_sq[rows] = torch.minimum(min_sq[rows], dist)

    def _update_points(self, points, center, label, candidates, min_sq, owner) -> None:
        """Measure only `candidates` (indices) against the new center, chunk by chunk."""
        for start in range(0, len(candidates), self.chunk_size):
            chunk = candidates[start : start + self.chunk_size]
            dist = _sq_dist(points[chunk], center)
            closer = dist < min_sq[chunk]
            moved = chunk[closer]
            min_sq[moved] = dist[closer]
            owner[moved] = label


class LoopGreedyCoresetSampler(GreedyCoresetSampler):
    """Reference: the same selection as a plain per-pick loop over the whole bank (slow; tests, benchmark)."""

    def _greedy_indices(self, points: torch.Tensor, k: int, first: int) -> torch.Tensor:
        picks = [first]
        min_sq = ((points - points[first]) ** 2).sum(dim=1)
        min_sq[first] = 0.0
        for _ in range(1, k):
            new = int(torch.argmax(min_sq))
            picks.append(new)
            min_sq = torch.minimum(min_sq, ((points - points[new]) ** 2).sum(dim=1))
            min_sq[new] = 0.0
        return torch.tensor(picks, dtype=torch.long)


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (None: unchanged), restoring the setting after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sq_dist(points: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances from each row of `points` to `center`, computed as a difference
    (not the |x|^2 - 2xc + |c|^2 expansion) so both greedy samplers round identically."""
    return ((points - center) ** 2).sum(dim=1)


def covering_radius(features: torch.Tensor, indices: torch.Tensor, chunk_size: int = 4096) -> float:
    """Largest distance from any row of `features` to its nearest row among `indices` (k-center cost)."""
    centers = features[indices].float()
    worst = 0.0
    for start in range(0, len(features), chunk_size):
        chunk = features[start : start + chunk_size].float()
        worst = max(worst, float(torch.cdist(chunk, centers).min(dim=1).values.max()))
    return worst


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BaseSampler",
    "GreedyCoresetSampler",
    "IdentitySampler",
    "LoopGreedyCoresetSampler",
    "RandomSampler",
    "coreset_size",
    "covering_radius",
    "random_projection",
    "validate_ratio",
]
