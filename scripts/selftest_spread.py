"""`npgmf-edge verify BUNDLE --json`, optionally with onnxruntime's graph optimisations off: one of the
spreads the self-test's margins are sized from (docs/BENCHMARKS.md, "Self-test margins").

    python scripts/selftest_spread.py BUNDLE [BUNDLE...] [--unoptimised] [--precision int8]
    qemu-x86_64 -cpu Haswell .venv/bin/python scripts/selftest_spread.py BUNDLE      # AVX2, no VNNI

Optimised and unoptimised onnxruntime fuse different kernels around the INT8 Q/DQ nodes (x86 NCHWc
convolutions, fused activations), as another ISA does. Prints one JSON object: per bundle, the rows of
`runtime.inspector.self_test_bundle` (score error against FP32, budget, margin, spread from the export
machine's answers, map error, verdict flips) and this machine's facts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime as ort

from npgmf_edge.runtime.inspector import self_test_bundle

NONE = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


class _Unoptimised:
    """Stands in for `ort.GraphOptimizationLevel`: whatever level the backend asks for, none."""

    def __getattr__(self, name: str) -> ort.GraphOptimizationLevel:
        return NONE


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--precision", action="append", help="only these precisions (default: every one)")
    parser.add_argument(
        "--unoptimised", action="store_true", help="ORT_DISABLE_ALL instead of ORT_ENABLE_ALL"
    )
    args = parser.parse_args()
    if args.unoptimised:
        ort.GraphOptimizationLevel = _Unoptimised()
    precisions = tuple(args.precision) if args.precision else None
    reports = {str(bundle): self_test_bundle(bundle, precisions=precisions) for bundle in args.bundles}
    print(json.dumps({"unoptimised": args.unoptimised, "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
