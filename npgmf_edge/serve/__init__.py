"""Serving a bundle over the network: NVIDIA Triton through PyTriton, its client and load test, and a
standard Triton model repository writer (docs/SERVE.md).

    model.py        the batched infer function: Triton requests in, one Inspector call, responses out
                    (pure numpy, testable without a server)
    stub_env.py     the Python environment PyTriton's backend stub runs in (numpy 1.x; see its docstring)
    server.py       binds the Inspector as two Triton models with dynamic batching; SIGTERM / SIGINT drains
    tree.py         every process and /dev/shm segment of one server, found from /proc and ended at stop
    client.py       a tritonclient client (HTTP or gRPC) returning typed results
    loadtest.py     `serve-bench`: concurrent clients, latency percentiles, every answer checked
    process.py      `serve` as a child process on free ports (scripts and tests)
    triton_repo.py  `triton-repo`: the bundle's single graph as an onnxruntime / TensorRT model repository

Only `model.py` and `triton_repo.py` work without the `serve` extra (nvidia-pytriton, tritonclient); the
CLI imports the others when a serving verb runs, so the base install does not need them.
"""
