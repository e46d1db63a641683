"""Progress of long work through one library (rich): a live bar on a terminal, plain lines in a log.

Where stderr is not a terminal (a log file, CI), a redrawn bar writes thousands of carriage-return frames;
there a `Reporter` prints one line when its task starts, one at each tenth of it, the `note`s its caller
adds (one per epoch, say) and one when it ends.

Example:
    >>> with Reporter("patch features", total=len(loader), unit="batches") as progress:
    ...     for batch in loader:
    ...         progress.advance()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG_STEPS = 10  # lines per task in a log, besides its start, end and notes
PREFIX = "[npgmf-edge]"
# Where a library call reports one line of what it is doing (the CLI passes a stderr writer).
Log = Callable[[str], None]


class Reporter:
    """One task's progress; `enabled=False` reports nothing (library calls made by tests, say)."""

    def __init__(self, description: str, total: int, *, unit: str = "", enabled: bool = True) -> None:
        self.description, self.total, self.unit = description, max(int(total), 0), unit
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.logged = enabled and not self.live
        self.done = 0
        self.step = max(1, math.ceil(self.total / LOG_STEPS))
        self.next_line = self.step
        self.started = time.perf_counter()
        self._bar: Progress | None = None

    def __enter__(self) -> Reporter:
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        self.line(f"{self.description}: {self.total} {self.unit}".rstrip())
        return self

    def line(self, message: str) -> None:
        """A line in the log (nothing on a terminal, where the bar shows the state)."""
        if self.logged:
            self.console.print(f"{PREFIX} {message}", markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        """A line worth keeping in both modes (above the bar on a terminal)."""
        if self.live and self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        self.line(message)

    def advance(self, steps: int = 1, status: str = "") -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, status=status)
        if self.done >= self.next_line and self.done < self.total:
            self.next_line += self.step
            self.line(f"{self.description}: {self.done}/{self.total} ({self._elapsed()}) {status}".rstrip())

    def _elapsed(self) -> str:
        return f"{time.perf_counter() - self.started:.1f} s"

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if exc[0] is None:
            self.line(f"{self.description}: done in {self._elapsed()}")
