"""`npgmf-edge serve`: a bundle's Inspector as NVIDIA Triton models, through PyTriton.

PyTriton starts a real Triton server (HTTP, gRPC, Prometheus metrics); its dynamic batcher hands batches
of up to `max_batch` images to `model.InspectorModel` in this process (one Inspector shared by `instances`
Triton model instances, threads: one decodes while another runs the graph). Two models over it (encoded
bytes, and `<name>_raw` pixels), because Triton batches only requests with the same inputs.

docs/SERVE.md says why the probe is `/v2/models/<name>/ready` (the raw model is bound first, so the
encoded model's readiness means both are loaded), how SIGTERM or SIGINT drains (`_drain`: unload both
models, answer every accepted request, then stop Triton and clean its process tree, tree.py) and why
tritonserver runs in a session of its own (a group signal reaches only serve, which then drains).

Example:
    >>> serve_bundle(Path("bundle"), ServeOptions(http_port=8000, grpc_port=8001), log=print)
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npgmf_edge.data import DEFAULT_MAX_PIXELS
from npgmf_edge.errors import ServeError
from npgmf_edge.progress import Log
from npgmf_edge.serve.model import (
    DEFAULT_MODEL,
    ENCODED_INPUT,
    MAP_OUTPUT,
    RAW_INPUT,
    RAW_SUFFIX,
    SIZE_INPUT,
    InspectorModel,
)
from npgmf_edge.serve.stub_env import libpython_dir, python_backend_env
from npgmf_edge.serve.tree import ServerTree

MONITOR_PERIOD_S = 1.0  # how often the main thread checks that Triton and the models are alive
QUIET_S = 0.5  # drained: no batch answered for this long (or 4 queue delays) after the unload
# Triton's own exit timeout, once `_drain` has seen every accepted batch answered: time for the last
# responses to leave, and for clients to close idle keep-alive connections, before it exits anyway.
IDLE_EXIT_TIMEOUT_S = 3
STUB_PROGRAM = "triton_python_backend_stub"  # one per model instance, ended when its model is unloaded
TERM_WAIT_S, KILL_WAIT_S = 2.0, 5.0  # for processes of the tree that outlive Triton's stop (tree.py)
# A model that fails to load (PyTriton's 1 s handshake between a model's instances, lost under heavy CPU
# load: docs/SERVE.md) gets a fresh Triton: a failed model cannot be loaded again in the same one.
START_ATTEMPTS = 3


@dataclass
class ServeOptions:
    """Where and how `serve` listens and batches; `max_batch` None means the bundle's own maximum."""

    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None
    max_queue_delay_us: int = 2000
    instances: int = 2
    precision: str | None = None
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    model_name: str = DEFAULT_MODEL
    exit_timeout_s: int = 30
    trust: Path | None = None  # accept only a bundle signed by this public key (or a key in this folder)

    def validate(self, bundle_max_batch: int) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if any(not 1 <= port <= 65535 for port in ports) or len(set(ports)) != 3:
            raise ServeError(f"HTTP, gRPC and metrics ports must be 3 different ports in 1..65535: {ports}")
        if self.max_batch is not None and not 1 <= self.max_batch <= bundle_max_batch:
            raise ServeError(
                f"--max-batch {self.max_batch} is outside 1..{bundle_max_batch}, what the bundle's graphs "
                "accept; choose a smaller one or re-export with a larger --max-batch"
            )
        if self.max_queue_delay_us < 0 or self.instances < 1 or self.max_pixels < 1:
            raise ServeError("--max-queue-delay-us must be >= 0, --instances and --max-pixels >= 1")

    @property
    def raw_model_name(self) -> str:
        return self.model_name + RAW_SUFFIX


def _point_stub_at(env: Path | None) -> None:
    """Make PyTriton start its backend stub in `env` (stub_env.py says why) and with this interpreter's own
    libpython. PyTriton reads the stub's environment from one module function and LD_LIBRARY_PATH from
    os.environ when it starts the server; both are set here, before it does."""
    if env is not None:
        from pytriton.server import triton_server

        triton_server.get_triton_python_backend_python_env = lambda: env
    folder = libpython_dir()
    if folder:
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if folder not in current.split(":"):
            os.environ["LD_LIBRARY_PATH"] = f"{folder}:{current}" if current else folder


def _start_triton_in_own_session() -> None:
    """Make PyTriton start tritonserver through `setsid`, in a session of its own, so a signal to serve's
    group does not stop Triton under the drain (docs/SERVE.md). `setsid` execs it in place: same pid,
    PyTriton's parent-death signal kept."""
    from pytriton import triton
    from pytriton.server.triton_server import TritonServer

    setsid = shutil.which("setsid")
    if setsid is None:
        raise ServeError("serve needs the `setsid` command (util-linux) to run Triton in its own session")
    if getattr(triton.TritonServer, "own_session", False):
        return

    class OwnSessionTritonServer(TritonServer):
        own_session = True

        def __init__(self, *, path, **kwargs) -> None:
            super().__init__(path=f"{setsid} {path}", **kwargs)

    triton.TritonServer = OwnSessionTritonServer


def _drain(options: ServeOptions, access_token: str, model: InspectorModel, tree: ServerTree) -> bool:
    """Unload both models through Triton's model-control API (Triton then refuses new requests for them),
    wait until the accepted queue is answered (`model.idle_seconds`), then until their backend stubs have
    ended, so Triton's short exit timeout cannot leave a stub behind. Stopping Triton directly would drop
    what is in flight (docs/SERVE.md). False when the infer function was still busy, or a model still
    loaded, after `exit_timeout_s`."""
    import tritonclient.http as http
    from pytriton.client.auth import create_auth_headers
    from tritonclient.utils import InferenceServerException

    headers = create_auth_headers(access_token, "http")  # PyTriton guards model control with a token
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    url = f"{host}:{options.http_port}"
    with http.InferenceServerClient(url, network_timeout=options.exit_timeout_s) as client:
        for name in (options.model_name, options.raw_model_name):
            try:
                client.unload_model(name, headers=headers)
            except InferenceServerException as exc:  # already gone: nothing left to drain
                logging.getLogger(__name__).warning("unloading %s: %s", name, exc)
    quiet_s = max(QUIET_S, 4 * options.max_queue_delay_us / 1e6)
    deadline = time.monotonic() + options.exit_timeout_s
    while time.monotonic() < deadline:
        if model.idle_seconds() >= quiet_s and not tree.running(STUB_PROGRAM):
            return True
        time.sleep(0.1)
    return False


def _tensors():
    from pytriton.model_config import Tensor

    outputs = [
        Tensor(name="score", dtype=np.float32, shape=(1,)),
        Tensor(name="threshold", dtype=np.float32, shape=(1,)),
        Tensor(name="verdict", dtype=np.bytes_, shape=(1,)),
        Tensor(name="precision", dtype=np.bytes_, shape=(1,)),
        Tensor(name="error", dtype=np.bytes_, shape=(1,)),
        Tensor(name=MAP_OUTPUT, dtype=np.float16, shape=(-1, -1)),
    ]
    encoded = [Tensor(name=ENCODED_INPUT, dtype=np.bytes_, shape=(1,))]
    raw = [  # bytes + shape, not a UINT8 [-1, -1, 3] tensor: model.py says why
        Tensor(name=RAW_INPUT, dtype=np.bytes_, shape=(1,)),
        Tensor(name=SIZE_INPUT, dtype=np.int32, shape=(3,)),
    ]
    return encoded, raw, outputs


def _infer_function(answer: Callable) -> Callable:
    """A PyTriton infer callable (a list of requests in, a list of output dicts out) around `answer`."""

    def infer(requests):
        return answer(requests, [request.requested_output_names for request in requests])

    return infer


def _load_failure(message: str) -> str:
    """Triton's model-load error in one line: its head without the backend stub's traceback, and the
    exception that ended the traceback."""
    head = message.split("Traceback (most recent call last)")[0].strip().splitlines()[0].rstrip(" :")
    raised = [
        line.strip() for line in message.splitlines() if re.match(r"\s*[\w.]+(Error|Exception): ", line)
    ]
    return f"{head}: {raised[-1]}" if raised else head


def _load_models(triton, options: ServeOptions, model: InspectorModel, batching) -> None:
    """Bind, and so load, the raw model and then the encoded one: the encoded model's readiness is the probe
    because it loads last."""
    encoded, raw, outputs = _tensors()
    for name, inputs, answer in (
        (options.raw_model_name, raw, model.infer_raw),
        (options.model_name, encoded, model.infer_encoded),
    ):
        triton.bind(
            model_name=name,
            infer_func=[_infer_function(answer) for _ in range(options.instances)],
            inputs=inputs,
            outputs=outputs,
            config=batching,
            strict=True,
        )
    triton.run()  # starts Triton if it is not running yet, and waits for the models


def serve_bundle(bundle: Path, options: ServeOptions, log: Log | None = None) -> None:
    """Serve `bundle` until SIGTERM or SIGINT; returns after Triton has drained and stopped."""
    from npgmf_edge.runtime import Inspector

    log = log or (lambda message: None)
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise ServeError(
            f"serving needs PyTriton ({exc}): pip install 'npgmf-edge[serve]' && pip install --no-deps "
            "'nvidia-pytriton>=0.5' (docs/SERVE.md)"
        ) from exc
    _point_stub_at(python_backend_env())  # before the bundle is opened: a missing stub env fails fast
    _start_triton_in_own_session()
    inspector = Inspector.open(
        Path(bundle),
        options.backend,
        options.device,
        options.precision,
        options.threads,
        options.max_pixels,
        trust=options.trust,
    )
    try:
        options.validate(inspector.manifest.max_batch)
    except ServeError:
        inspector.close()
        raise
    max_batch = options.max_batch or inspector.manifest.max_batch
    model = InspectorModel(inspector, options.max_pixels)
    config = TritonConfig(
        http_address=options.host,
        http_port=options.http_port,
        grpc_address=options.host,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        exit_timeout_secs=IDLE_EXIT_TIMEOUT_S,
    )
    batching = ModelConfig(
        max_batch_size=max_batch,
        batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us),
    )
    stop, drained = threading.Event(), False
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    tree = ServerTree.mark(shm_prefixes=(f"pytrtion{os.getpid()}-",))  # PyTriton's name for Triton's shm
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            access_token = secrets.token_urlsafe(32)
            security = TritonSecurityConfig(access_token=access_token)
            with Triton(config=config, security_config=security) as triton:
                try:
                    _load_models(triton, options, model, batching)
                except InferenceServerException as exc:  # a model failed to load: START_ATTEMPTS says why
                    reason = _load_failure(str(exc))
                    tree.note_segments()
                    if attempt == START_ATTEMPTS or stop.is_set():
                        raise ServeError(f"Triton could not load the models of {bundle}: {reason}") from None
                    log(f"warning: Triton could not load the models ({reason}); starting it again")
                    continue
                tree.note_segments()
                log(
                    f"serving {bundle} ({inspector.precision}, max batch {max_batch}, queue delay "
                    f"{options.max_queue_delay_us} us, {options.instances} instances) as models "
                    f"{options.model_name!r} (encoded images) and {options.raw_model_name!r} (RGB bytes + "
                    f"size) on http {options.host}:{options.http_port}, grpc {options.grpc_port}; ready: GET "
                    f"/v2/models/{options.model_name}/ready; metrics: :{options.metrics_port}/metrics; "
                    "SIGTERM or SIGINT drains and stops"
                )
                while not stop.wait(MONITOR_PERIOD_S):
                    if not triton.is_alive():
                        raise ServeError(f"Triton or a model stopped unexpectedly while serving {bundle}")
                log("stopping: refusing new requests, answering the accepted ones")
                drained = _drain(options, access_token, model, tree)
                if not drained:
                    log(f"warning: the models still answered after {options.exit_timeout_s} s; stopping")
                tree.note_segments()  # while every process of the tree still runs
            break
    finally:
        survivors = tree.end(TERM_WAIT_S, KILL_WAIT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        model.close()
        inspector.close()
    if survivors:
        log(f"warning: processes {survivors} of the server did not end after SIGKILL")
    if drained:
        log("stopped: every accepted request was answered")
