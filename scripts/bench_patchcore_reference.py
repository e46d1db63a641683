"""The structural path alone at PatchCore's reference configuration, through the runtime and in torch.

anomalib 2.7's PatchCore (wide_resnet50_2, layers 2 + 3, 256 px, a 10,240 x 1,536 coreset, k = 9) takes about
357 ms per image in torch on this project's 2-core machine (the figure the runtime issue quotes). This script
builds our structural path with the same encoder, input size and bank size (a random coreset of 10,240 rows:
an exact flat search costs the same whatever the rows hold) and times, per image at batch 1, in one run:
    runtime, faiss: the patch-feature graph in onnxruntime (fp32, and int8 when --int8), one FAISS search,
                    the resize (a `--knn faiss` bundle)
    runtime, graph: one onnxruntime graph with the kNN (one GEMM, ArgMin, exact distance) and the resize
                    appended (a `--knn graph` bundle; `export.graph_heads.KnnHead`), with the GEMM in FP32
                    (`--knn-search exact`) or in INT8 with an exact re-rank of 4 candidates (`--knn-search
                    int8`; its accuracy on pretrained features: scripts/int8_search_accuracy.py)
    torch:          the same extractor in eager torch with the same FAISS search, and the graph-kNN
                    network in eager torch
Speeds are not asserted anywhere; docs/BENCHMARKS.md records the output with the machine.

Usage:
    python scripts/bench_patchcore_reference.py --iters 20 --out patchcore_ref.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from npgmf_edge.bench import describe_machine
from npgmf_edge.config import get_preset
from npgmf_edge.export import precision as precision_ops
from npgmf_edge.export.graph_heads import KnnHead
from npgmf_edge.export.onnx_graph import export_onnx
from npgmf_edge.knn import FaissNN
from npgmf_edge.models.inspection_net import INPUT_NAME, InspectionNet
from npgmf_edge.models.structural.torch_model import build_patch_extractor
from npgmf_edge.postprocess import structural_maps
from npgmf_edge.runtime.backends.base import GraphSpec
from npgmf_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, session_from_onnx

SIZE, BANK, DIM = 256, 10_240, 1_536
ANOMALIB_MS = 357.0


class StructuralGraph(nn.Module):
    """pixels -> structural map at the input size: the extractor, the in-graph kNN and the resize."""

    def __init__(self, net: InspectionNet, coreset: np.ndarray, grid: tuple[int, int], search: str) -> None:
        super().__init__()
        self.net, self.knn = net, KnnHead(coreset, grid, search)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        distances = self.knn(self.net(pixels)[0])[:, None]
        return F.interpolate(distances, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def timed(fn, iters: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(iters):
        tick = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - tick)
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--int8", action="store_true", help="also time a Q/DQ INT8 graph")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg = get_preset("paper")  # separate structural encoder: wide_resnet50_2 levels 2 + 3 below
    cfg.image_size = SIZE
    cfg.weights.pretrained = False  # timing only: random weights cost the same
    cfg.structural.encoder, cfg.structural.share_logical_encoder = "wide_resnet50_2", False
    cfg.structural.pretrain_embed_dim, cfg.structural.embed_dim = 1024, DIM
    torch.manual_seed(0)
    extractor = build_patch_extractor(cfg, weights_follow=True).eval()
    net = InspectionNet(None, extractor, share_encoder=False)
    coreset = np.random.default_rng(0).standard_normal((BANK, DIM)).astype(np.float32)
    knn = FaissNN(on_gpu=False, num_threads=args.threads).fit(coreset)
    if args.threads:
        torch.set_num_threads(args.threads)
    pixels = (np.random.default_rng(1).random((1, 3, SIZE, SIZE)) * 255).astype(np.float32)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(
            net, torch.zeros(1, 3, SIZE, SIZE), Path(tmp) / "raw.onnx", INPUT_NAME, ["patch_features"]
        )
        graphs = {"fp32": precision_ops.simplify(raw, Path(tmp) / "fp32.onnx")}
        if args.int8:
            calibration = [
                (np.random.default_rng(i).random((1, 3, SIZE, SIZE)) * 255).astype(np.float32)
                for i in range(8)
            ]
            graphs["int8"] = precision_ops.quantize_int8(graphs["fp32"], Path(tmp) / "int8.onnx", calibration)
        for name, graph in graphs.items():
            spec = GraphSpec(graph.name, name, "faiss", INPUT_NAME, (3, SIZE, SIZE), 1)
            backend = OnnxRuntimeBackend(session_from_onnx(graph, spec, threads=args.threads), spec)
            features = backend.infer(pixels)["patch_features"]
            results[f"runtime {name}: graph"] = timed(
                lambda b=backend: b.infer(pixels), args.iters, args.warmup
            )
            results[f"runtime {name}: whole path"] = timed(
                lambda b=backend: structural_maps(b.infer(pixels)["patch_features"], knn, SIZE),
                args.iters,
                args.warmup,
            )
        results["knn search + resize"] = timed(
            lambda: structural_maps(features, knn, SIZE), args.iters, args.warmup
        )
        grid = tuple(features.shape[-2:])
        for search in ("exact", "int8"):
            module = StructuralGraph(net, coreset, grid, search).eval()
            example = torch.zeros(1, 3, SIZE, SIZE)
            raw = export_onnx(module, example, Path(tmp) / f"{search}.onnx", INPUT_NAME, ["map"])
            graph = precision_ops.simplify(raw, Path(tmp) / f"{search}_fp32.onnx")
            spec = GraphSpec(graph.name, "fp32", "graph", INPUT_NAME, (3, SIZE, SIZE), 1)
            backend = OnnxRuntimeBackend(session_from_onnx(graph, spec, threads=args.threads), spec)
            results[f"runtime fp32, kNN in the graph, {search} search: whole path"] = timed(
                lambda b=backend: b.infer(pixels), args.iters, args.warmup
            )
        whole = StructuralGraph(net, coreset, grid, "exact").eval()
        with torch.no_grad():
            tensor = torch.from_numpy(pixels)
            results["torch eager: graph"] = timed(lambda: net(tensor), args.iters, args.warmup)
            results["torch eager: whole path"] = timed(
                lambda: structural_maps(net(tensor)[0].numpy(), knn, SIZE), args.iters, args.warmup
            )
            results["torch eager, kNN in the network: whole path"] = timed(
                lambda: whole(tensor), args.iters, args.warmup
            )
    report = {
        "machine": describe_machine(),
        "config": {"encoder": "wide_resnet50_2", "levels": [2, 3], "image_size": SIZE, "coreset": [BANK, DIM],
                   "grid": list(features.shape[-2:]), "k": 1},
        "ms_per_image_batch_1": results,
        "anomalib_reference_ms": ANOMALIB_MS,
        "ratio_to_anomalib": {k: v["p50_ms"] / ANOMALIB_MS for k, v in results.items() if "whole path" in k},
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
