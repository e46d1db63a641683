"""The torch reference paths of `npgmf-edge bench` (they import torch; the runtime never does).

`TorchPath` is the run's eager FP32 network on the CPU doing what the bundle does: for a `--knn faiss`
bundle, `InspectionNet`, the FAISS search and the numpy fusion; for a `--knn graph` bundle, the network
with kNN (one matmul) and fusion appended. So bench compares backends, not methods. `TorchCudaPath` is
the GPU path for a station with CUDA and torch but no TensorRT: the network with kNN and fusion appended
(`export.graph_heads.GraphInspectionNet`), the network under FP16 autocast, the kNN and fusion in FP32,
captured once per batch size as a CUDA graph and replayed (`cuda_graphs=False`: launched eagerly, kernel
by kernel, to show what the graph capture saves in launch overhead).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from npgmf_edge.data import read_image
from npgmf_edge.inspection import Inspection
from npgmf_edge.postprocess import structural_maps
from npgmf_edge.preprocess import map_to_image_size, to_model_input
from npgmf_edge.rundir import load_coreset, load_run
from npgmf_edge.runtime.inspector import STAGES
from npgmf_edge.runtime.manifest import Manifest

CUDA_GRAPH_WARMUP = 3  # side-stream iterations before capture, as torch.cuda.graphs recommends


class _TorchReference:
    """A run doing what its bundle does, timed per stage as `Inspector` is; subclasses compute the scores."""

    self_test = None  # a run has no bundle self-test

    def __init__(self, run_dir: Path, manifest: Manifest, precision: str) -> None:
        self.run = load_run(Path(run_dir))
        self.calibration = manifest.calibration[precision]
        self.size = self.run.cfg.image_size
        self.last_stages = dict.fromkeys(STAGES, 0.0)

    def _graph_net(self, net: torch.nn.Module, manifest: Manifest) -> torch.nn.Module:
        """`net` with kNN and fusion appended, as a `--knn graph` bundle's graph."""
        from npgmf_edge.export.graph_heads import GraphInspectionNet

        grid, coreset = tuple(manifest.coreset["grid"]), load_coreset(self.run.run_dir)
        return GraphInspectionNet(net, coreset, self.calibration, self.size, grid, manifest.knn_search)

    @torch.no_grad()
    def inspect(self, images: list[Path]) -> list[Inspection]:
        stages = dict.fromkeys(STAGES, 0.0)
        tick = time.perf_counter()
        decoded = [read_image(p) for p in images]
        stages["decode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        pixels = np.stack([to_model_input(image, self.size) for image in decoded])
        stages["preprocess"] += time.perf_counter() - tick
        fused, scores = self._scores(pixels, stages)
        tick = time.perf_counter()
        threshold = self.calibration.threshold
        results = [
            Inspection(float(score), threshold, map_to_image_size(m, *image.shape[:2]))
            for image, m, score in zip(decoded, fused, scores, strict=True)
        ]
        stages["post"] += time.perf_counter() - tick
        self.last_stages = stages
        return results

    def _scores(self, pixels: np.ndarray, stages: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class TorchPath(_TorchReference):
    """Eager FP32 on the CPU: the computation of the bundle's kNN mode (FAISS + numpy, or in the network)."""

    def __init__(self, run_dir: Path, manifest: Manifest, precision: str, threads: int | None = None) -> None:
        self._threads_before = torch.get_num_threads()  # process-wide: restored by close()
        if threads is not None:
            torch.set_num_threads(threads)
        super().__init__(run_dir, manifest, precision)
        self.graph_net = self._graph_net(self.run.net, manifest).eval() if manifest.knn == "graph" else None

    def _scores(self, pixels: np.ndarray, stages: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        tick = time.perf_counter()
        if self.graph_net is not None:
            fused, scores = self.graph_net(torch.from_numpy(pixels))[:2]
            stages["graph"] += time.perf_counter() - tick  # network, kNN and fusion: one call
            return fused[:, 0].numpy(), scores.numpy()
        logical_map, features = self.run.net(torch.from_numpy(pixels))
        stages["graph"] += time.perf_counter() - tick
        tick = time.perf_counter()
        structural = structural_maps(features.numpy(), self.run.scorer, self.size)
        stages["knn"] += time.perf_counter() - tick
        tick = time.perf_counter()
        fused, scores = self.calibration.post(structural, logical_map[:, 0].numpy())
        stages["post"] += time.perf_counter() - tick
        return fused, scores

    def close(self) -> None:
        self.run = self.graph_net = None
        torch.set_num_threads(self._threads_before)


class _AutocastNetwork(torch.nn.Module):
    """The inspection network under FP16 autocast, its outputs back in FP32 for the kNN and fusion."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.float16):
            logical_map, features = self.net(pixels)
        return logical_map.float(), features.float()


class TorchCudaPath(_TorchReference):
    """FP16 autocast network + FP32 kNN (one matmul) + fusion on the GPU, replayed as CUDA graphs (or
    launched eagerly with `cuda_graphs=False`)."""

    def __init__(
        self, run_dir: Path, manifest: Manifest, precision: str, max_batch: int, cuda_graphs: bool = True
    ) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("torch-cuda: torch sees no CUDA device here")
        super().__init__(run_dir, manifest, precision)
        self.model = self._graph_net(_AutocastNetwork(self.run.net), manifest).cuda().eval()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        self.max_batch = max_batch
        self.cuda_graphs = cuda_graphs

    @torch.no_grad()
    def _graph(self, batch: int):
        if batch not in self.graphs:
            static_in = torch.zeros(batch, 3, self.size, self.size, device="cuda")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(CUDA_GRAPH_WARMUP):
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self.graphs[batch] = (graph, static_in, static_out)
        return self.graphs[batch]

    def _scores(self, pixels: np.ndarray, stages: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        if self.cuda_graphs:
            graph, static_in, out = self._graph(len(pixels))
            tick = time.perf_counter()
            static_in.copy_(torch.from_numpy(pixels), non_blocking=False)
            graph.replay()
        else:
            tick = time.perf_counter()
            out = self.model(torch.from_numpy(pixels).cuda())
        fused, scores = out[0][:, 0].cpu().numpy(), out[1].cpu().numpy()  # synchronises
        stages["graph"] += time.perf_counter() - tick  # network, kNN and fusion: one replay or eager call
        return fused, scores

    def close(self) -> None:
        self.graphs.clear()
        self.run = self.model = None
