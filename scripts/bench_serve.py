"""What serving costs: the in-process Inspector and `npgmf-edge serve` on the same machine, in one run.

1. In process: `Inspector.inspect` on batches of 1, 4 and 8 of the same image files (bench.measure, the
   `npgmf-edge bench` measurement); the best throughput is the reference.
2. Served: `npgmf-edge serve` started as a child process on free ports, then `serve-bench`'s load test
   (`serve.loadtest.run_load`) at 1, 4 and 16 concurrent clients, one image per request, every answer
   checked against the Inspector's score for that image; at 16 clients also with raw pixels decoded in
   the client. The ratio column is served throughput over the in-process best. The raw-pixel run decodes
   the 16 files once before the clock starts, so it shows the server without decoding, not a client that
   decodes every frame.

Images: `bench`'s synthetic 480 x 640 camera-like PNG frames (16 distinct, so a swapped answer shows),
or `--images DIR`.

Usage:
    python scripts/bench_serve.py BUNDLE --duration 20 --out bench_serve.json
    python scripts/bench_serve.py BUNDLE --protocol http --server-arg=--instances --server-arg=1
    python scripts/bench_serve.py BUNDLE --clients 16 --no-raw --server-arg=--max-queue-delay-us=0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from npgmf_edge.bench import bench_images, describe_machine, measure
from npgmf_edge.runtime import Inspector
from npgmf_edge.serve.loadtest import LoadOptions, reference_results, run_load
from npgmf_edge.serve.process import ServerProcess

CLIENTS = (1, 4, 16)
IN_PROCESS_BATCHES = (1, 4, 8)


def in_process(bundle: Path, images: list[Path], iters: int) -> list[dict]:
    rows = []
    with Inspector.open(bundle) as inspector:
        for batch in IN_PROCESS_BATCHES:
            if batch > inspector.manifest.max_batch:
                continue
            result = measure(inspector, images, batch, iters=max(iters // batch, 4), warmup=2)
            rows.append({"path": "in-process Inspector.inspect", "batch": batch, **result})
            print(f"in process, batch {batch}: {result['throughput_images_per_s']:.1f} images/s", flush=True)
    return rows


def served(bundle: Path, images: list[Path], args: argparse.Namespace, best: float) -> list[dict]:
    reference = reference_results(bundle, images)
    rows = []
    log = Path(args.server_log)
    with ServerProcess(bundle, *args.server_arg, log_path=log) as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        runs = [(c, False) for c in args.clients or CLIENTS] + (
            [] if args.no_raw else [(max(args.clients or CLIENTS), True)]
        )
        for clients, raw in runs:
            options = LoadOptions(concurrency=clients, duration_s=args.duration, raw=raw)
            report = run_load(url, images, options, reference)
            report["ratio_to_in_process_best"] = round(report["images_per_s"] / best, 3)
            rows.append(report)
            print(
                f"served ({report['protocol']}, {report['input']}), {clients} clients: "
                f"{report['images_per_s']:.1f} images/s ({report['ratio_to_in_process_best']:.2f}x), "
                f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, mismatches "
                f"{report['mismatches']}, lost {report['lost']}",
                flush=True,
            )
        exit_code = server.stop()
    print(f"server exit code after SIGTERM: {exit_code}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--images", type=Path, default=None, help="folder of images (default: synthetic)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per served measurement")
    parser.add_argument("--iters", type=int, default=64, help="images per in-process measurement")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument("--clients", type=int, action="append", help="concurrent clients (default 1, 4, 16)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-pixel run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `serve` argument")
    parser.add_argument("--server-log", default="bench_serve_server.log")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        size = Inspector.open(args.bundle).image_size
        images = sorted(set(bench_images(size, 16, args.images, Path(work))))
        in_rows = in_process(args.bundle, images, args.iters)
        best = max(row["throughput_images_per_s"] for row in in_rows)
        served_rows = served(args.bundle, images, args, best)
    report = {
        "machine": describe_machine(),
        "bundle": str(args.bundle),
        "images": len(images),
        "in_process": in_rows,
        "in_process_best_images_per_s": round(best, 2),
        "served": served_rows,
        "server_args": args.server_arg,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"in_process_best": report["in_process_best_images_per_s"], "served": [
        {k: r[k] for k in ("protocol", "input", "concurrency", "images_per_s", "ratio_to_in_process_best",
                           "p50_ms", "p95_ms", "p99_ms", "errors", "mismatches", "lost")} for r in served_rows
    ]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
