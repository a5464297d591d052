"""Stage counters the CLI renders: rich bars in a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    """What a stage reports: its size, its advance, and when it is done."""

    def start(self, stage: str, total: int, done: int = 0) -> None: ...

    def extend(self, stage: str, count: int) -> None:
        """The stage's total grows by `count` (more work found while it runs)."""
        ...

    def advance(self, stage: str, count: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...

    def log(self, message: str) -> None: ...

    def close(self) -> None: ...


class PlainProgress:
    """One line per update, throttled; readable in a log file.

    Stages report from several threads at once (fine-tuning beside generation, judge passes):
    each line goes out whole, in one write under a lock. `print` writes the text and its
    newline apart, and two threads' lines then ran into one (`[fine-tune] start: 2 to do[generate]
    start: 18 to do`), hiding the second line from anything reading the log line by line."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 5.0):
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.totals: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}
        self._lock = threading.RLock()

    def start(self, stage: str, total: int, done: int = 0) -> None:
        with self._lock:
            self.totals[stage], self.counts[stage] = total, done
            self.started[stage] = self.last_line[stage] = time.monotonic()
            if done:
                self._line(stage, f"start: {total - done} to do ({done} of {total} already done)")
            else:
                self._line(stage, f"start: {total} to do")

    def extend(self, stage: str, count: int) -> None:
        if count <= 0:
            return
        with self._lock:
            self.totals[stage] = self.totals.get(stage, 0) + count
            self._line(stage, f"+{count} to do ({self.counts.get(stage, 0)}/{self.totals[stage]})")

    def advance(self, stage: str, count: int = 1) -> None:
        with self._lock:
            self.counts[stage] = self.counts.get(stage, 0) + count
            now = time.monotonic()
            if now - self.last_line.get(stage, 0.0) >= self.interval_s:
                self.last_line[stage] = now
                self._line(stage, f"{self.counts[stage]}/{self.totals.get(stage, '?')}")

    def finish(self, stage: str) -> None:
        with self._lock:
            elapsed = time.monotonic() - self.started.get(stage, time.monotonic())
            total = self.totals.get(stage, 0)
            self._line(stage, f"done: {self.counts.get(stage, 0)}/{total} in {elapsed:.1f}s")

    def log(self, message: str) -> None:
        self._write(message)

    def close(self) -> None:
        with self._lock:
            self.stream.flush()

    def _line(self, stage: str, text: str) -> None:
        self._write(f"[{stage}] {text}")

    def _write(self, line: str) -> None:
        """The line and its newline in one write, whole among other threads' lines."""
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class RichProgress:
    """Live progress bars for an interactive terminal."""

    def __init__(self, console=None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichBars

        self.bars = RichBars(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, int] = {}
        self.bars.start()

    def start(self, stage: str, total: int, done: int = 0) -> None:
        self.tasks[stage] = self.bars.add_task(stage, total=max(total, 0), completed=done)

    def extend(self, stage: str, count: int) -> None:
        if stage in self.tasks and count > 0:
            task = self.tasks[stage]
            total = self.bars.tasks[task].total or 0
            self.bars.update(task, total=total + count)

    def advance(self, stage: str, count: int = 1) -> None:
        if stage in self.tasks:
            self.bars.advance(self.tasks[stage], count)

    def finish(self, stage: str) -> None:
        if stage in self.tasks:
            task = self.tasks[stage]
            self.bars.update(task, completed=self.bars.tasks[task].total)

    def log(self, message: str) -> None:
        self.bars.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self.bars.stop()


def default_progress(stream: TextIO | None = None) -> Progress:
    """Rich bars when writing to a terminal, plain lines otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        return RichProgress()
    return PlainProgress(stream)


def report_console(stream: TextIO | None = None):
    """A rich console for report tables: the terminal's width, or 160 columns in a log."""
    from rich.console import Console

    stream = stream or sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 160)
