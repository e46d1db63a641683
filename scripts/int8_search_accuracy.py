"""How often the int8 kNN search (`export --knn-search int8`) returns the exact nearest-row distance, on
pretrained features of real images at PatchCore's reference dimensions.

The timing of the reference configuration (scripts/bench_patchcore_reference.py) uses wide_resnet50_2 with
random weights: its cost does not depend on them, but the search's accuracy does, and no pretrained WRN50
can be had offline. So this script takes the `edge` preset's ImageNet EfficientNet-Lite2 structural
features at 256 px, aggregated to the reference's 1,536 dimensions (32 x 32 patches per image), builds a
10,240-row coreset from random patches of normal magnetic-tile images, and searches the patches of held-out
normal, blowhole and crack images both ways (`export.graph_heads.KnnHead`, torch: the same integers as the
exported graph). Reported per number of re-ranked candidates K: the share of patches whose distance equals
the exact one, the largest and mean overestimate in units of the median nearest-neighbour distance, and
the largest relative change of an image's score (its largest patch distance).

Usage:
    python scripts/int8_search_accuracy.py --data ../shared/data/magnetic_tile
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from npgmf_edge.config import get_preset
from npgmf_edge.data import read_image
from npgmf_edge.export.graph_heads import KnnHead
from npgmf_edge.models.inspection_net import InspectionNet
from npgmf_edge.models.structural.torch_model import build_patch_extractor
from npgmf_edge.preprocess import to_model_input

SIZE, BANK, DIM, PRETRAIN_DIM = 256, 10_240, 1_536, 1_024
BANK_IMAGES, BATCH = 40, 8


def features(net: InspectionNet, paths: list[Path]) -> torch.Tensor:
    """(N, D, h, w) patch features of `paths`, a batch at a time."""
    parts = []
    for start in range(0, len(paths), BATCH):
        pixels = np.stack([to_model_input(read_image(p), SIZE) for p in paths[start : start + BATCH]])
        with torch.no_grad():
            parts.append(net(torch.from_numpy(pixels.astype(np.float32)))[0])
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="magnetic-tile folder (MT_Free, ...)")
    parser.add_argument("--queries", type=int, default=4, help="held-out images of each class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = get_preset("edge")
    cfg.image_size, cfg.weights.random_clip = SIZE, True
    cfg.structural.pretrain_embed_dim, cfg.structural.embed_dim = PRETRAIN_DIM, DIM
    net = InspectionNet(None, build_patch_extractor(cfg, weights_follow=True).eval(), share_encoder=False)
    net.eval()

    def images(kind: str) -> list[Path]:
        return sorted((args.data / kind / "Imgs").glob("*.jpg"))

    normal = images("MT_Free")
    queries = normal[BANK_IMAGES : BANK_IMAGES + args.queries]
    queries += images("MT_Blowhole")[: args.queries] + images("MT_Crack")[: args.queries]
    bank_features = features(net, normal[:BANK_IMAGES])
    patches = bank_features.flatten(2).transpose(1, 2).reshape(-1, bank_features.shape[1]).numpy()
    coreset = patches[np.random.default_rng(args.seed).permutation(len(patches))[:BANK]]
    query_features = features(net, queries)
    grid = tuple(query_features.shape[-2:])

    with torch.no_grad():
        exact = KnnHead(coreset, grid, "exact")(query_features).numpy()
        rows = {}
        for candidates in (1, 2, 4, 8):
            approx = KnnHead(coreset, grid, "int8", candidates)(query_features).numpy()
            excess = (approx - exact) / np.median(exact)
            image_exact = exact.reshape(len(queries), -1).max(axis=1)
            image_approx = approx.reshape(len(queries), -1).max(axis=1)
            rows[f"K={candidates}"] = {
                "patches_with_the_exact_distance": float(np.isclose(approx, exact, rtol=1e-5).mean()),
                "max_overestimate_in_median_distances": float(excess.max()),
                "mean_overestimate_in_median_distances": float(excess.mean()),
                "image_score_max_rel_diff": float(np.abs(image_approx / image_exact - 1).max()),
            }
    report = {
        "features": "edge preset (ImageNet EfficientNet-Lite2), 256 px, aggregated to 1,536 dims",
        "coreset": [len(coreset), int(coreset.shape[1])],
        "query_images": len(queries),
        "patches": int(exact.size),
        "by_candidates": rows,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
