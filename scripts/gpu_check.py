"""The GPU acceptance in one run (issue 22): run it through `scripts/gpu_check.sh` on a lent or real GPU.

It makes its own data, trains the tiny preset on the GPU, exports every precision (with TensorRT engines
where TensorRT is installed), benches every path this machine has (onnxruntime on the CPU, onnxruntime-gpu
with the CUDA and TensorRT execution providers, native TensorRT, the torch reference on the CPU, torch-cuda
eager and with CUDA graphs), and verifies the bundle with every backend (each precision's self-test, and
every graph against the torch run). Every row is one `npgmf-edge` command, printed before it runs, so a
failing row can be rerun by hand. A row this machine cannot run is skipped with the reason; on a CPU-only
machine training falls back to the CPU so the CPU rows still run. Written to OUT: `gpu_check.json`, the
same table as `gpu_check.md`, each command's own JSON and stderr under `steps/`. Exit 1 when a row failed.

Example (the default suite runs a smaller one: tests/test_gpu_check.py):
    scripts/gpu_check.sh --out gpu_check_out             # about 3-5 minutes on an H100 (not yet measured)
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUDGET_SECONDS = 480  # the acceptance must fit in 8 minutes on a GPU machine
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Row:
    """One line of the table: a command and what it gave, or why it was skipped."""

    step: str  # make-data, train, export, bench, verify
    path: str  # backend / device of the row ("-" where there is one)
    precision: str = "-"
    status: str = "skipped"  # ok | failed | skipped
    result: str = ""  # the numbers that matter, in words
    reason: str = ""  # why skipped or failed
    seconds: float = 0.0
    command: str = ""
    output: dict[str, Any] | None = field(default=None, repr=False)


@dataclass
class Machine:
    """What this machine offers, each with the reason when it does not."""

    torch_cuda: str | None  # None: torch sees a GPU
    gpu: str | None
    onnxruntime_cuda: str | None  # None: onnxruntime-gpu's CUDA provider is listed
    onnxruntime_tensorrt: str | None
    tensorrt: str | None  # None: TensorRT, cuda-python and a device
    facts: dict[str, Any]


def probe_machine() -> Machine:
    try:
        import torch

        cuda = torch.cuda.is_available()
        torch_reason = None if cuda else f"torch {torch.__version__} sees no CUDA GPU"
        gpu = torch.cuda.get_device_name(0) if cuda else None
    except ImportError as exc:
        torch_reason, gpu = f"torch is not installed ({exc})", None
    import onnxruntime as ort

    providers = ort.get_available_providers()

    def provider(name: str) -> str | None:
        if name in providers:
            return None
        return f"onnxruntime {ort.__version__} has no {name} (providers: {', '.join(providers)})"

    from npgmf_edge.runtime.backends.tensorrt import tensorrt_unavailable_reason
    from npgmf_edge.runtime.platform_facts import machine_facts

    return Machine(
        torch_reason, gpu, provider("CUDAExecutionProvider"), provider("TensorrtExecutionProvider"),
        tensorrt_unavailable_reason(), machine_facts(),
    )  # fmt: skip


class Check:
    """Runs the rows in order, each as a subprocess with its own JSON and stderr kept under `steps/`."""

    def __init__(self, out: Path, cli: list[str], timeout: float) -> None:
        self.out, self.cli, self.timeout = out, cli, timeout
        (out / "steps").mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []

    def skip(self, row: Row, reason: str) -> Row:
        row.status, row.reason = "skipped", reason
        print(f"-- skip {row.step} {row.path} {row.precision}: {reason}", flush=True)
        self.rows.append(row)
        return row

    def run_unless(
        self, reason: str | None, row: Row, args: list[str], summarise: Callable[[dict[str, Any]], str]
    ) -> Row:
        """`run`, or `skip` with `reason` when there is one."""
        return self.skip(row, reason) if reason is not None else self.run(row, args, summarise)

    def run(self, row: Row, args: list[str], summarise: Callable[[dict[str, Any]], str]) -> Row:
        """Run `npgmf-edge ARGS --json`; the row is ok when it exits 0 and `summarise` accepts its JSON."""
        argv = [*self.cli, *args, "--json"]
        row.command = "npgmf-edge " + shlex.join([*args, "--json"])
        print(f"$ {row.command}", flush=True)
        name = f"{len(self.rows):02d}-{row.step}-{row.path}-{row.precision}".replace("/", "_")
        tick = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
            stdout, stderr, code = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, stderr, code = "", str(exc.stderr or ""), None
        row.seconds = round(time.perf_counter() - tick, 1)
        (self.out / "steps" / f"{name}.stderr").write_text(stderr)
        (self.out / "steps" / f"{name}.json").write_text(stdout)
        try:
            row.output = json.loads(stdout) if stdout.strip() else None
        except json.JSONDecodeError:
            row.output = None
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        if code is None:
            row.status, row.reason = "failed", f"timed out after {self.timeout:.0f} s"
        elif code != 0 and row.output is None:
            row.status, row.reason = "failed", errors[-1] if errors else f"exit {code}"
        else:
            try:
                row.result = summarise(row.output or {})
                row.status = "ok" if code == 0 else "failed"
                row.reason = "" if code == 0 else f"exit {code}: a check failed (the result says which)"
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                row.status, row.reason = "failed", f"unexpected output ({type(exc).__name__}: {exc})"
        print(f"   {row.status} in {row.seconds:.1f} s: {row.result or row.reason}", flush=True)
        self.rows.append(row)
        return row


def bench_result(report: dict[str, Any]) -> str:
    parts = []
    for r in report["rows"]:
        parts.append(
            f"batch {r['batch']}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"{r['throughput_images_per_s']:.0f} img/s"
        )
    return "; ".join(parts)


def self_test_result(report: dict[str, Any]) -> str:
    rows = report["rows"]
    backends = sorted({r["backend"] for r in rows})
    verdicts = ", ".join(
        f"{r['precision']} no self-test"
        if r["passed"] is None
        else f"{r['precision']} {'ok' if r['passed'] else 'FAILS'} "
        f"(error vs FP32 {r['score_error']:.2g} <= budget {r['budget']:.2g})"
        for r in rows
    )
    return f"{verdicts} on {'; '.join(backends)}"


def parity_result(report: dict[str, Any]) -> str:
    return "every graph matches the torch run" if report["passed"] else "a precision misses its limits"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="Folder for everything.")
    parser.add_argument("--epochs", type=int, default=10, help="Logical-branch epochs of the tiny preset.")
    parser.add_argument("--data-size", type=int, default=128, help="Side of the generated images (px).")
    parser.add_argument("--image-size", type=int, default=None, help="Model input (default: the preset's).")
    parser.add_argument("--n-train", type=int, default=60, help="Good training images to generate.")
    parser.add_argument("--precision", action="append", choices=PRECISIONS, help="Repeat; default all.")
    parser.add_argument("--batch", type=int, action="append", help="Bench batch sizes; default 1 and 8.")
    parser.add_argument("--iters", type=int, default=50, help="Timed bench calls per path and batch.")
    parser.add_argument("--timeout", type=float, default=300, help="Seconds allowed to one command.")
    args = parser.parse_args(argv)
    precisions = tuple(args.precision or PRECISIONS)
    batches = args.batch or [1, 8]
    out = args.out.resolve()
    data, run, bundle = out / "data", out / "run", out / "bundle"
    started = time.perf_counter()
    machine = probe_machine()
    check = Check(out, [sys.executable, "-m", "npgmf_edge"], args.timeout)

    n = args.n_train
    small = max(3, n // 4)
    made = check.run(
        Row("make-data", "-"),
        ["make-data", str(data), "--image-size", str(args.data_size), "--n-train", str(n),
         "--n-validation", str(max(4, n // 3)), "--n-test-good", str(small), "--n-logical", str(small),
         "--n-structural", str(small), "--overwrite"],
        lambda r: f"{sum(r['counts'].values())} images at {r['image_size']} px",
    )  # fmt: skip
    size = ["--image-size", str(args.image_size)] if args.image_size else []
    train = ["train", str(data), "--out", str(run), "--preset", "tiny", "--max-epochs", str(args.epochs),
             "--random-clip", *size]  # fmt: skip

    def trained(r: dict[str, Any]) -> str:
        logical = r["logical"]
        return (
            f"{logical['epochs']} epochs on {logical['device']}, {logical['seconds_per_epoch']:.1f} s each; "
            f"coreset {r['structural']['coreset_size']} on {r['structural']['device']}"
        )

    if made.status != "ok":
        trained_row = check.skip(Row("train", "cuda"), "no data (make-data failed)")
    elif machine.torch_cuda is None:
        trained_row = check.run(Row("train", "cuda"), [*train, "--device", "cuda"], trained)
    else:
        check.skip(Row("train", "cuda"), machine.torch_cuda)
        trained_row = check.run(Row("train", "cpu (fallback)"), [*train, "--device", "cpu"], trained)

    export = ["export", str(run), "--out", str(bundle), "--max-batch", str(max(batches)),
              *[a for p in precisions for a in ("--precision", p)]]  # fmt: skip

    def exported_result(r: dict[str, Any]) -> str:
        return f"{', '.join(r['precisions'])}; engines: {', '.join(r['engines']) or 'none'}"

    export_row = Row("export", "tensorrt engines" if machine.tensorrt is None else "onnx only")
    if trained_row.status != "ok":
        check.skip(export_row, "no run (train failed)")
    elif machine.tensorrt is None:
        check.run(export_row, [*export, "--tensorrt"], exported_result)
        if export_row.status != "ok":  # the graphs without engines, so that every other row still runs
            retry = Row("export", "onnx only (retry)")
            export_row = check.run(retry, [*export, "--no-tensorrt"], exported_result)
    else:
        check.run(export_row, [*export, "--no-tensorrt"], exported_result)
    exported = export_row.status == "ok"
    first = precisions[0]  # what the CPU and torch rows bench

    batch_args = [a for b in batches for a in ("--batch", str(b))]
    bench_common = ["--iters", str(args.iters), "--warmup", "3", *batch_args]
    ort = ["--backend", "onnxruntime", "--device"]
    runtime_paths = [  # (row path, arguments choosing it, the reason it cannot run here or None)
        ("onnxruntime cpu", [*ort, "cpu"], None),
        ("onnxruntime cuda", [*ort, "cuda"], machine.onnxruntime_cuda),
        ("onnxruntime trt-ep", [*ort, "tensorrt"], machine.onnxruntime_tensorrt),
        ("tensorrt", ["--backend", "tensorrt", "--device", "cuda"], machine.tensorrt),
    ]
    no_bundle = None if exported else "no bundle (export failed)"
    for name, backend_args, reason in runtime_paths:
        for precision in precisions if name != "onnxruntime cpu" else (first,):
            args_ = ["bench", str(bundle), *backend_args, "--precision", precision, *bench_common]
            check.run_unless(no_bundle or reason, Row("bench", name, precision), args_, bench_result)
    reference_paths = [
        ("torch", "torch cpu", None),
        ("torch-cuda-eager", "torch-cuda eager", machine.torch_cuda),
        ("torch-cuda", "torch-cuda graphs", machine.torch_cuda),
    ]
    for backend, name, reason in reference_paths:
        args_ = ["bench", str(bundle), "--backend", backend, "--run", str(run), "--precision", first]
        args_ += bench_common
        check.run_unless(no_bundle or reason, Row("bench", name, first), args_, bench_result)

    checked = ",".join(precisions)
    for name, backend_args, reason in runtime_paths:
        args_ = ["verify", str(bundle), *backend_args]
        check.run_unless(no_bundle or reason, Row("verify", name, checked), args_, self_test_result)
    args_ = ["verify", str(bundle), "--run", str(run), "--data", str(data)]
    check.run_unless(no_bundle, Row("verify", "torch run vs every graph", checked), args_, parity_result)

    seconds = round(time.perf_counter() - started, 1)
    report = {
        "machine": {**asdict(machine), "python": platform.python_version()},
        "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "precision": list(precisions),
            "batch": batches,
        },
        "rows": [asdict(r) for r in check.rows],
        "seconds": seconds,
        "within_budget": seconds <= BUDGET_SECONDS,
        "passed": all(r.status != "failed" for r in check.rows),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "gpu_check.md").write_text(table + "\n")
    print(table)
    return 0 if report["passed"] else 1


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = m["gpu"] or "no GPU seen by torch"
    lines = [
        f"GPU check on {gpu}; {m['facts'].get('cpu', platform.machine())}; {report['seconds']:.0f} s "
        f"(budget {BUDGET_SECONDS} s: {'within' if report['within_budget'] else 'OVER'}); "
        + ("passed" if report["passed"] else "FAILED"),
        "",
        "| step | path | precision | status | result or reason | s |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for r in report["rows"]:
        text = r["result"] if r["status"] == "ok" else r["reason"] or r["result"]
        text = text.replace("|", "/")
        cells = (r["step"], r["path"], r["precision"], r["status"], text, r["seconds"])
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
