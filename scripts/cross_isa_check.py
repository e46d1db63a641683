"""Each precision of a bundle against its FP32 graph on a dataset's test images, with the runtime only.

Run it natively and under an emulated CPU without VNNI to see what a station without VNNI answers:
    python scripts/cross_isa_check.py demo_out/bundle demo_out/data
    qemu-x86_64 -cpu Haswell .venv/bin/python scripts/cross_isa_check.py demo_out/bundle demo_out/data
(`qemu-user` from Debian; `-cpu Haswell` reports AVX2 and FMA, no AVX-512 and no VNNI, so onnxruntime
takes its AVX2 `vpmaddubsw` INT8 kernels.) Prints the CPU features the process sees, then per precision:
verdict agreement with FP32, image AUROC, max score difference, and the self-test result where the bundle
has one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from npgmf_edge.data import load_dataset
from npgmf_edge.runtime import Inspector
from npgmf_edge.runtime.platform_facts import machine_facts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--every", type=int, default=1, help="take every n-th test image (emulation is slow)")
    args = parser.parse_args()
    samples = load_dataset(args.data).test[:: args.every]
    labels = np.array([s.label for s in samples])
    paths = [s.image_path for s in samples]
    report = {"machine": machine_facts(), "images": len(paths), "precisions": {}}
    reference = None
    for precision in ("fp32", "fp16", "int8"):
        try:
            inspector = Inspector.open(args.bundle, precision=precision, self_test=False, threads=2)
        except Exception as exc:  # a precision the bundle does not hold
            print(f"{precision}: not opened ({exc})", file=sys.stderr)
            continue
        tick = time.perf_counter()
        results = inspector.inspect(paths)
        seconds = time.perf_counter() - tick
        test = inspector.run_self_test()
        inspector.close()
        scores = np.array([r.score for r in results])
        verdicts = np.array([r.is_anomalous for r in results])
        if reference is None:
            reference = (scores, verdicts)
        report["precisions"][precision] = {
            "verdict_agreement_with_fp32": float(np.mean(verdicts == reference[1])),
            "image_auroc": float(roc_auc_score(labels, scores)),
            "max_score_diff_vs_fp32": float(np.abs(scores - reference[0]).max()),
            "self_test": None if test is None else test.to_dict(),
            "seconds": round(seconds, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
