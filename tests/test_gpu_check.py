"""scripts/gpu_check.sh, the GPU acceptance, run here in its smallest configuration.

On a machine without a GPU (this one) every GPU row must be skipped with its reason and every CPU row must
pass; on a GPU machine the same test requires the GPU rows to run. Either way: one JSON, one markdown table
with a line per row, and every row that ran names the command that reruns it.
"""

import json
import subprocess
from pathlib import Path

import onnxruntime
import pytest

from npgmf_edge.runtime.backends.tensorrt import tensorrt_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data-size", "64", "--n-train", "10", "--image-size", "64", "--epochs", "1", "--precision", "fp32",
         "--batch", "1", "--iters", "2", "--timeout", "900"]  # fmt: skip
CPU_ROWS = {("make-data", "-"), ("export", "onnx only"), ("bench", "onnxruntime cpu"), ("bench", "torch cpu"),
            ("verify", "onnxruntime cpu"), ("verify", "torch run vs every graph")}  # fmt: skip
GPU_ROWS = {  # row -> what its reason must name when it is skipped
    ("train", "cuda"): "sees no CUDA GPU",
    ("bench", "onnxruntime cuda"): "no CUDAExecutionProvider",
    ("bench", "onnxruntime trt-ep"): "no TensorrtExecutionProvider",
    ("bench", "tensorrt"): "TensorRT",
    ("bench", "torch-cuda eager"): "sees no CUDA GPU",
    ("bench", "torch-cuda graphs"): "sees no CUDA GPU",
    ("verify", "onnxruntime cuda"): "no CUDAExecutionProvider",
    ("verify", "onnxruntime trt-ep"): "no TensorrtExecutionProvider",
    ("verify", "tensorrt"): "TensorRT",
}


def test_gpu_check_runs_every_cpu_row_and_skips_each_gpu_row_with_its_reason(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    out = tmp_path / "check"
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out), *SMALL],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    table = (out / "gpu_check.md").read_text()
    rows = {(r["step"], r["path"]): r for r in report["rows"]}

    assert report["passed"] is True
    assert table.strip() in done.stdout  # the table is printed as well as written
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(report["rows"]) + 2
    for key in CPU_ROWS:
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["command"].startswith(f"npgmf-edge {key[0]} ")
    assert rows[("verify", "onnxruntime cpu")]["output"]["rows"][0]["passed"] is True

    available = {
        "sees no CUDA GPU": torch.cuda.is_available(),
        "no CUDAExecutionProvider": "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
        "no TensorrtExecutionProvider": "TensorrtExecutionProvider" in onnxruntime.get_available_providers(),
        "TensorRT": tensorrt_unavailable_reason() is None,
    }
    for key, reason in GPU_ROWS.items():
        row = rows[key]
        if available[reason]:
            assert row["status"] == "ok", row
        else:
            assert row["status"] == "skipped" and reason in row["reason"], row
            precision = "-" if key[0] == "train" else "fp32"
            assert f"| {key[0]} | {key[1]} | {precision} | skipped | " in table
    if not available["sees no CUDA GPU"]:
        fallback = rows[("train", "cpu (fallback)")]
        assert fallback["status"] == "ok" and fallback["output"]["logical"]["device"] == "cpu"
