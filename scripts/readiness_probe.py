"""When does Triton's `/v2/health/ready` answer 200 under PyTriton, against the models' own readiness?

Starts PyTriton the way `npgmf-edge serve` does (its stub environment, Triton in its own session) with the
same layout, two models of two instances each bound in order, but trivial infer functions, and polls
`/v2/health/ready` and both `/v2/models/<name>/ready` every 10 ms from before Triton starts. Prints every
change of the three answers (seconds since the start) and the moments the server said ready while a model
was not. Issue 24, docs/SERVE.md ("Why `GET /v2/health/ready` is not the probe").

Modes:
    api    PyTriton's default, what `serve` uses: Triton starts with no model, the models are loaded
           through the API once it is up
    local  PyTriton's local model store: Triton loads the models at its start, before its endpoints open
Extra `--triton-arg key=value` pairs are added to Triton's command line (e.g. model-load-thread-count=1,
model-load-retry-count=3, which PyTriton's TritonConfig does not offer; set through its private
`_server_args`, which is why `serve` does not).

Usage:
    python scripts/readiness_probe.py api
    python scripts/readiness_probe.py local --triton-arg model-load-thread-count=1
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from npgmf_edge.serve.process import free_ports, http_status
from npgmf_edge.serve.server import _point_stub_at, _start_triton_in_own_session
from npgmf_edge.serve.stub_env import python_backend_env

MODELS = ("first", "second")
POLL_S = 0.01


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("api", "local"))
    parser.add_argument("--triton-arg", action="append", default=[], help="key=value for tritonserver")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.triton_arg)

    from pytriton import triton as pytriton_triton
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

    _point_stub_at(python_backend_env())
    _start_triton_in_own_session()
    if extra:
        base = pytriton_triton.TritonServer

        class WithExtraArgs(base):
            def __init__(self, **kwargs) -> None:
                super().__init__(**kwargs)
                self._server_config._server_args.update(extra)

        pytriton_triton.TritonServer = WithExtraArgs

    http, grpc, metrics = free_ports(3)
    urls = [f"http://127.0.0.1:{http}/v2/health/ready"]
    urls += [f"http://127.0.0.1:{http}/v2/models/{name}/ready" for name in MODELS]
    changes: list[tuple[float, tuple]] = []
    stop, start = threading.Event(), time.monotonic()

    def poll() -> None:
        last = None
        while not stop.is_set():
            answers = tuple(http_status(url, timeout_s=1) for url in urls)
            if answers != last:
                changes.append((round(time.monotonic() - start, 3), answers))
                last = answers
            time.sleep(POLL_S)

    threading.Thread(target=poll, daemon=True).start()

    def infer(requests):
        return [{"n": np.ones((len(request["x"]), 1), np.int64)} for request in requests]

    config = ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=1000))
    local = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
    policy = local if args.mode == "local" else None
    ports = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
    triton_config = TritonConfig(http_address="127.0.0.1", **ports)
    try:
        with Triton(config=triton_config, triton_lifecycle_policy=policy) as t:
            for name in MODELS:
                t.bind(
                    name,
                    [infer, infer],
                    [Tensor(name="x", dtype=np.int32, shape=(1,))],
                    [Tensor(name="n", dtype=np.int64, shape=(1,))],
                    config=config,
                    strict=True,
                )
            t.run()
            time.sleep(0.5)
            outcome = "started"
    except Exception as exc:  # a failed start is a result here
        outcome = f"start failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    stop.set()
    early = [(t, answers) for t, answers in changes if answers[0] == 200 and answers[1:] != (200, 200)]
    print(f"{args.mode} {extra or ''}: {outcome}")
    print(f"server ready while a model was not: {early}")
    print(f"changes (s, (/v2/health/ready, {', '.join(MODELS)})): {changes}")


if __name__ == "__main__":
    main()
