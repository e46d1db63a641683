"""Every process and /dev/shm segment one `npgmf-edge serve` started, found from /proc and removed at stop.

Triton's backend stubs (and their helpers) can outlive Triton as orphans of init, ignoring SIGTERM, with
their shared memory left in /dev/shm (docs/SERVE.md). So the server marks its tree: `MARK_VARIABLE` is set
in its environment before Triton starts, every descendant inherits it (orphans too), and `ServerTree` finds
them by it in /proc/PID/environ, with their start times so that a reused pid is never signalled. Linux
only (as PyTriton's wheel); /proc is enough, no psutil.

Example:
    >>> tree = ServerTree.mark()          # before Triton starts
    >>> ...                               # serve, drain, stop Triton
    >>> tree.end(term_wait_s=2, kill_wait_s=5)   # -> the pids still alive after SIGKILL (normally none)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

MARK_VARIABLE = "NPGMF_EDGE_SERVE_ID"
PROC = Path("/proc")
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class ProcessId:
    """A pid with its start time (clock ticks after boot): the pair names one process, even after the pid
    is reused."""

    pid: int
    start: int


def process_stat(pid: int) -> tuple[str, int, int, int, int] | None:
    """(state, ppid, process group, session, start time) from /proc/PID/stat; None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def alive(process: ProcessId) -> bool:
    """True while `process` runs (a zombie has ended; its parent or init only has to reap it)."""
    stat = process_stat(process.pid)
    return stat is not None and stat[4] == process.start and stat[0] not in ("Z", "X")


def _pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def shm_mapped_by(pid: int) -> set[Path]:
    """The /dev/shm files `pid` has mapped (its /proc/PID/maps)."""
    try:
        lines = (PROC / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return set()
    prefix = f"{SHM}/"
    return {Path(line.split(maxsplit=5)[5].removesuffix(" (deleted)")) for line in lines if prefix in line}


@dataclass
class ServerTree:
    """The processes carrying this server's mark, and the shared memory they and the server map."""

    mark: str
    shm_prefixes: tuple[str, ...] = ()
    segments: set[Path] = field(default_factory=set)

    @classmethod
    def mark(cls, shm_prefixes: tuple[str, ...] = ()) -> ServerTree:
        """Mark this process's environment so that every process it starts from now on inherits the mark;
        `shm_prefixes`: /dev/shm name prefixes that belong to this server whoever maps them."""
        value = f"{os.getpid()}-{secrets.token_hex(8)}"
        os.environ[MARK_VARIABLE] = value
        return cls(value, shm_prefixes)

    def processes(self) -> list[ProcessId]:
        """Every live process carrying the mark, except this one and its own process group (which the
        signal that stops the server reaches anyway, and which ends with it)."""
        needle = f"{MARK_VARIABLE}={self.mark}".encode()
        own_group = os.getpgid(0)
        found = []
        for pid in _pids():
            stat = process_stat(pid)
            if pid == os.getpid() or stat is None or stat[2] == own_group or stat[0] in ("Z", "X"):
                continue
            try:
                environment = (PROC / str(pid) / "environ").read_bytes()
            except OSError:
                continue
            if needle in environment.split(b"\0"):
                found.append(ProcessId(pid, stat[4]))
        return found

    def running(self, program: str) -> list[ProcessId]:
        """The processes of the tree whose program (argv[0]'s file name) is `program`."""
        found = []
        for process in self.processes():
            try:
                argv0 = (PROC / str(process.pid) / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if Path(argv0.decode(errors="replace")).name == program:
                found.append(process)
        return found

    def note_segments(self) -> None:
        """Remember the shared memory the tree and this process map now (call it while they run)."""
        for process in [ProcessId(os.getpid(), 0), *self.processes()]:
            self.segments |= shm_mapped_by(process.pid)

    def end(self, term_wait_s: float, kill_wait_s: float) -> list[int]:
        """SIGTERM what is left of the tree, SIGKILL what outlives `term_wait_s`, wait up to `kill_wait_s`
        for it to go, then remove the tree's shared memory. Returns the pids still alive (none, unless
        a process is stuck in the kernel)."""
        self.note_segments()
        left = self.processes()
        for sig, wait_s in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, kill_wait_s)):
            for process in left:
                if alive(process):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, sig)
            deadline = time.monotonic() + wait_s
            while (left := [p for p in left if alive(p)]) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.remove_segments()
        return [process.pid for process in left]

    def remove_segments(self) -> None:
        """Unlink the segments noted and those named with one of this server's prefixes."""
        prefixes = self.shm_prefixes
        named = {path for path in SHM.iterdir() if prefixes and path.name.startswith(prefixes)}
        for path in self.segments | named:
            path.unlink(missing_ok=True)
