"""Nearest-neighbour search over the coreset: one small interface, FAISS and brute-force implementations.

`NearestNeighbourScorer`: `fit(bank)`, `search(queries, k) -> (distances, indices)`, `save`, `load`.
Distances are Euclidean everywhere. The search ranks by |q|^2 - 2 q.b + |b|^2, which cancellation makes
noisy for a query close to its neighbour (~1e-5 in a distance of 0.02), so the reported distances are
recomputed exactly as ||q - b||: backends (and a torch run and its exported graph) agree to float32.

- `FaissNN`: exact `IndexFlatL2`, on the GPU where this FAISS can (`faiss_gpu_unavailable_reason`;
  faiss-cpu, the only FAISS for aarch64, has no GPU code); always saved in CPU form, loadable anywhere.
- `ApproximateFaissNN`: `IndexIVFFlat` for large banks; overrides only `_create_index` and `_train`.
- `BruteForceNN`: chunked numpy matrix products, saved as `.npy`; the reference FAISS is tested against.

Example:
    >>> nn_ = FaissNN().fit(coreset)          # coreset: (M, D) float32
    >>> dist, idx = nn_.search(patches, k=1)  # (Q, 1) each
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from npgmf_edge.errors import ConfigError
from npgmf_edge.fileio import atomic_write

DEFAULT_CHUNK_SIZE = 1024  # query rows per block in brute-force search: bounds the (chunk, M) distance block


def _as_matrix(x, name: str) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {array.shape}")
    return array


class NearestNeighbourScorer(abc.ABC):
    """k-nearest-neighbour search in a fixed bank; distances are Euclidean."""

    dim: int | None = None

    @abc.abstractmethod
    def fit(self, bank: np.ndarray) -> NearestNeighbourScorer:
        """Index the (M, D) float32 bank (replacing any previous one); returns self."""

    @abc.abstractmethod
    def _search_sq(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and indices, each (Q, k)."""

    @abc.abstractmethod
    def vectors(self, indices: np.ndarray) -> np.ndarray:
        """Bank rows at `indices` (any shape) -> (*indices.shape, D) float32."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of vectors in the bank (0 before `fit`)."""

    @abc.abstractmethod
    def save(self, path: Path) -> Path:
        """Write the fitted bank/index to `path` (atomically)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path) -> NearestNeighbourScorer:
        """A fitted scorer read back from a file written by `save`."""

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances (Q, k) float32 and indices (Q, k) int64 of the k nearest bank vectors."""
        if self.size == 0:
            raise RuntimeError(f"{type(self).__name__}.search called before fit/load")
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the bank has {self.dim}")
        if not 1 <= k <= self.size:
            raise ValueError(f"k must be in [1, {self.size}], got {k}")
        _, idx = self._search_sq(queries, k)
        idx = idx.astype(np.int64)
        exact = np.linalg.norm(self.vectors(idx) - queries[:, None, :], axis=-1)
        return exact.astype(np.float32), idx


class BruteForceNN(NearestNeighbourScorer):
    """Exact search by chunked numpy matrix products; needs nothing but numpy."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.bank: np.ndarray | None = None

    @property
    def size(self) -> int:
        return 0 if self.bank is None else len(self.bank)

    def vectors(self, indices: np.ndarray) -> np.ndarray:
        return self.bank[indices]

    def fit(self, bank: np.ndarray) -> BruteForceNN:
        self.bank = _as_matrix(bank, "bank")
        self.dim = self.bank.shape[1]
        self._bank_sq = np.einsum("ij,ij->i", self.bank, self.bank)
        return self

    def _search_sq(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.bank is not None
        n = len(queries)
        dist = np.empty((n, k), dtype=np.float32)
        idx = np.empty((n, k), dtype=np.int64)
        for start in range(0, n, self.chunk_size):
            q = queries[start : start + self.chunk_size]
            sq = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ self.bank.T) + self._bank_sq[None, :]
            if k == 1:
                best = np.argmin(sq, axis=1)[:, None]
            else:
                part = np.argpartition(sq, k - 1, axis=1)[:, :k]
                order = np.argsort(np.take_along_axis(sq, part, axis=1), axis=1, kind="stable")
                best = np.take_along_axis(part, order, axis=1)
            idx[start : start + len(q)] = best
            dist[start : start + len(q)] = np.take_along_axis(sq, best, axis=1)
        return dist, idx

    def save(self, path: Path) -> Path:
        if self.bank is None:
            raise RuntimeError("BruteForceNN.save called before fit")
        bank = self.bank

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # np.save on a path would append ".npy" to the temp name
                np.save(handle, bank, allow_pickle=False)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BruteForceNN:
        return cls(chunk_size).fit(np.load(Path(path), allow_pickle=False))


def faiss_gpu_unavailable_reason() -> str | None:
    """None when FAISS can search on a GPU here, else why not (one line); ImportError without faiss.

    faiss-cpu has no GPU code at all (no `StandardGpuResources`), whatever GPU the machine has, and it is
    the only FAISS wheel for aarch64; a faiss-gpu build reports the GPUs it sees."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return f"faiss {faiss.__version__} here is a CPU-only build (faiss-cpu)"
    if faiss.get_num_gpus() < 1:
        return f"faiss {faiss.__version__} sees no CUDA GPU"
    return None


class FaissNN(NearestNeighbourScorer):
    """Exact FAISS search (`IndexFlatL2`): on the GPU when this FAISS can (`on_gpu=None`), or as told.

    `on_gpu=True` where FAISS cannot is a ConfigError saying why, not an AttributeError from deep inside."""

    def __init__(self, on_gpu: bool | None = None, num_threads: int | None = None) -> None:
        import faiss

        self._faiss = faiss
        if on_gpu is not False:
            reason = faiss_gpu_unavailable_reason()
            if on_gpu and reason is not None:
                raise ConfigError(
                    f"FAISS cannot search on the GPU: {reason}; install faiss-gpu-cu12 in place of faiss-cpu "
                    "(x86_64 only), or search on the CPU"
                )
            on_gpu = reason is None
        self.on_gpu = on_gpu
        self.num_threads = num_threads  # applied around each search only: OpenMP's setting is process-wide
        self.index = None
        self.bank: np.ndarray | None = None  # CPU copy of the vectors, for the exact distances

    def vectors(self, indices: np.ndarray) -> np.ndarray:
        return self.bank[indices]

    @property
    def size(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _create_index(self, dim: int, n: int):
        return self._faiss.IndexFlatL2(dim)

    def _train(self, index, bank: np.ndarray) -> None:
        """Flat indexes need no training."""

    def _set_search_params(self, index) -> None:
        """Flat indexes have none."""

    def _to_device(self, index):
        if not self.on_gpu:
            return index
        faiss = self._faiss
        self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU index
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    def _to_cpu(self, index):
        return self._faiss.index_gpu_to_cpu(index) if self.on_gpu else index

    def _reconstruct_all(self, index) -> np.ndarray:
        """Every stored vector of a CPU index, in id order."""
        return index.reconstruct_n(0, index.ntotal)

    def fit(self, bank: np.ndarray) -> FaissNN:
        bank = _as_matrix(bank, "bank")
        self.dim = bank.shape[1]
        index = self._create_index(self.dim, len(bank))
        self._train(index, bank)
        index.add(bank)
        self._set_search_params(index)
        self.index = self._to_device(index)
        self.bank = bank.copy()
        return self

    def _search_sq(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.num_threads is None:
            return self.index.search(queries, k)
        before = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(self.num_threads)
        try:
            return self.index.search(queries, k)
        finally:
            self._faiss.omp_set_num_threads(before)

    def save(self, path: Path) -> Path:
        if self.index is None:
            raise RuntimeError(f"{type(self).__name__}.save called before fit")
        cpu_index = self._to_cpu(self.index)
        return atomic_write(path, lambda tmp: self._faiss.write_index(cpu_index, str(tmp)))

    @classmethod
    def load(cls, path: Path, **options) -> FaissNN:
        """Read an index file; `options` go to the constructor (e.g. on_gpu, nprobe)."""
        scorer = cls(**options)
        index = scorer._faiss.read_index(str(path))
        scorer.dim = int(index.d)
        scorer.bank = scorer._reconstruct_all(index)
        scorer._set_search_params(index)
        scorer.index = scorer._to_device(index)
        return scorer


class ApproximateFaissNN(FaissNN):
    """Inverted-file FAISS index (`IndexIVFFlat`) for large coresets: ~sqrt(M) lists, `nprobe` searched."""

    def __init__(self, on_gpu: bool | None = None, nlist: int | None = None, nprobe: int = 8) -> None:
        super().__init__(on_gpu)
        self.nlist = nlist
        self.nprobe = nprobe

    def _create_index(self, dim: int, n: int):
        nlist = self.nlist or max(1, round(n**0.5))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per list
        return self._faiss.IndexIVFFlat(self._faiss.IndexFlatL2(dim), dim, nlist)

    def _train(self, index, bank: np.ndarray) -> None:
        index.train(bank)

    def _reconstruct_all(self, index) -> np.ndarray:
        index.make_direct_map()  # IVF lists are not in id order; the map makes reconstruct work
        return index.reconstruct_n(0, index.ntotal)

    def _set_search_params(self, index) -> None:
        index.nprobe = min(self.nprobe, index.nlist)  # a search setting: (re)applied after fit and load


SCORERS: dict[str, type[NearestNeighbourScorer]] = {
    "faiss": FaissNN,
    "faiss_ivf": ApproximateFaissNN,
    "brute": BruteForceNN,
}


def create_scorer(backend: str) -> NearestNeighbourScorer:
    """A fresh scorer for a config's `knn_backend`."""
    try:
        return SCORERS[backend]()
    except KeyError:
        raise ConfigError(f"unknown knn backend {backend!r}; choose one of: {', '.join(SCORERS)}") from None
