"""`npgmf-edge serve` as a child process on free ports: for benchmark scripts and tests, which need a real
server they can also stop with SIGTERM.

Example:
    >>> with ServerProcess(Path("bundle")) as server:
    ...     ServeClient(server.grpc_url).inspect_path(Path("part.png"))
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from npgmf_edge.errors import ServeError
from npgmf_edge.serve.client import ServeClient
from npgmf_edge.serve.stub_env import stub_env_unavailable

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 90.0


def pytriton_cannot_run() -> str | None:
    """Why the PyTriton wheel cannot run here (glibc 2.35+ Linux on x86_64 / aarch64, a stub with numpy 1)."""
    libc, version = platform.libc_ver()
    if platform.system() != "Linux" or libc != "glibc":
        return f"the PyTriton wheel needs glibc Linux, this is {platform.system()} {libc or 'without glibc'}"
    if tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        return f"the PyTriton wheel needs glibc 2.35 or newer, this has {version}"
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"the PyTriton wheel is built for x86_64 and aarch64, not {platform.machine()}"
    return stub_env_unavailable()


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that were free a moment ago (bound to port 0 together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_status(url: str, timeout_s: float = 5.0) -> int:
    """The HTTP status of a GET of `url` (a readiness probe's view), 0 when nothing listens there yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class ServerProcess:
    """Starts `python -m npgmf_edge serve BUNDLE` on free ports and waits until Triton and both models are
    ready; `stop()` sends SIGTERM and returns the exit code. Its log goes to `log_path`. The server leads
    a process group of its own, as a command started from a terminal does: `signal_group` sends what
    Ctrl-C or `timeout` would, without reaching the caller."""

    def __init__(self, bundle: Path, *args: str, log_path: Path | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = log_path or Path(os.devnull)
        command = [
            sys.executable, "-m", "npgmf_edge", "serve", str(bundle), "--host", "127.0.0.1",
            "--port-http", str(self.http_port), "--port-grpc", str(self.grpc_port),
            "--port-metrics", str(self.metrics_port), *args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        with ServeClient(self.http_url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServeError(f"the server exited with {self.process.returncode}; see {self.log_path}")
                if client.ready():
                    return self
                time.sleep(0.5)
        self.stop()
        raise ServeError(f"the server was not ready after {timeout_s:g} s; see {self.log_path}")

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the server's whole process group (the server and whatever stayed in its group)."""
        os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the drain and exit; SIGKILL only if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
