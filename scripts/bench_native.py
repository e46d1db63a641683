"""libnpgmf against the Python runtime on the same bundle and images, in one run (issue 21's speed points).

Per image at batch 1, end to end from an image file: decode, pre-process, graph, kNN, post (the map back
at the image's size), by `Inspector.inspect([path])` and by native/build/npgmf-bench (the library's own
stage clocks). Both with onnxruntime's default threads, the same images, alternating Python and native
rounds so that the machine's load hits both alike. Also the largest score and map differences between them
(the parity numbers for docs/BENCHMARKS.md). Prints one JSON object and a markdown table.

    python scripts/bench_native.py BUNDLE [BUNDLE...] --images data/breakfast_tray/test --count 8 --repeat 5

--baseline-build DIR adds a third path, "baseline": npgmf-bench of another build of native/ (e.g. the
commit before a change, configured with CMake into DIR), in the same alternating rounds, so a change to the
native runtime is measured before and after under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/native"))
STAGES = ("decode", "preprocess", "graph", "knn", "post")


def python_round(bundle: Path, precision: str, images: list[Path], repeat: int) -> dict:
    from npgmf_edge.runtime import Inspector

    with Inspector.open(bundle, precision=precision) as inspector:
        inspector.inspect([images[0]])  # warm-up
        totals, stages = [], dict.fromkeys(STAGES, 0.0)
        for _ in range(repeat):
            for image in images:
                tick = time.perf_counter()
                inspector.inspect([image])
                totals.append(time.perf_counter() - tick)
                for name in STAGES:
                    stages[name] += inspector.last_stages[name]
    return {"p50_s": statistics.median(totals), "stages_s": {k: v / len(totals) for k, v in stages.items()}}


def native_round(bundle: Path, precision: str, images: list[Path], repeat: int, build: Path) -> dict:
    command = [build / "npgmf-bench", bundle, precision, str(repeat), *images]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def parity(bundle: Path, precision: str, images: list[Path]) -> dict:
    from npgmf_ctypes import NativeLibrary

    from npgmf_edge.runtime import Inspector

    library = NativeLibrary(ROOT / "native/build/libnpgmf.so")
    with (
        Inspector.open(bundle, precision=precision) as python,
        library.open(bundle, precision=precision) as native,
    ):
        expected = python.inspect(images)
        scores, maps, verdicts = [], [], []
        for image, want in zip(images, expected, strict=True):
            got = native.inspect_file(image, map_shape=want.anomaly_map.shape)
            scores.append(abs(got.score - want.score))
            maps.append(float(np.abs(got.anomaly_map - want.anomaly_map).max()))
            verdicts.append(got.verdict == want.verdict)
    return {"max_score_diff": max(scores), "max_map_diff": max(maps), "verdicts_equal": all(verdicts)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-build", type=Path, help="another native build folder to time beside")
    args = parser.parse_args()
    builds = {"native": ROOT / "native/build"}
    if args.baseline_build:
        builds["baseline"] = args.baseline_build
    images = sorted(args.images.rglob("*.png"))
    images = images[:: max(1, len(images) // args.count)][: args.count]
    rows = []
    for bundle in args.bundles:
        manifest = json.loads((bundle / "manifest.json").read_text())
        for precision in manifest["graphs"]:
            if precision == "fp16":
                continue
            runs = {"python": [], **{path: [] for path in builds}}
            for _ in range(args.rounds):
                runs["python"].append(python_round(bundle, precision, images, args.repeat))
                for path, build in builds.items():
                    runs[path].append(native_round(bundle, precision, images, args.repeat, build))
            best = {k: min(v, key=lambda r: r["p50_s"]) for k, v in runs.items()}  # the least disturbed round
            rows.append({
                "bundle": bundle.name, "preset": manifest["preset"], "knn": manifest["knn"],
                "precision": precision, **best, **parity(bundle, precision, images),
            })  # fmt: skip
    print(json.dumps({"images": [str(p) for p in images], "rows": rows}, indent=1))
    print("| bundle | precision | path | p50 ms | decode / pre / graph / kNN / post ms | outside graph ms "
          "| outside / e2e vs python |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def outside_ms(stages: dict) -> float:
        return (stages["decode"] + stages["preprocess"] + stages["post"]) * 1e3

    for row in rows:
        python = row["python"]
        for path in ("python", *builds):
            s = row[path]["stages_s"]
            stages = " / ".join(f"{s[k] * 1e3:.1f}" for k in STAGES)
            p50 = row[path]["p50_s"] * 1e3
            name = f"{row['preset']} {row['knn']}"
            outside = outside_ms(s)
            ratios = ""
            if path != "python":
                e2e = row[path]["p50_s"] / python["p50_s"]
                ratios = f"{outside / outside_ms(python['stages_s']):.2f}x / {e2e:.2f}x"
            print(
                f"| {name} | {row['precision']} | {path} | {p50:.1f} | {stages} | {outside:.1f} | {ratios} |"
            )


if __name__ == "__main__":
    main()
