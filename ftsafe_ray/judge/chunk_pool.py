"""Worker processes for CPU-bound work over chunks of rows, such as keyword judging.

Each worker is a fresh interpreter (`python -c`) that reads pickled calls on its stdin and
writes pickled results on its stdout. Not multiprocessing: its spawn start method runs the
caller's main script again in every worker (a script without an `if __name__ == "__main__"`
guard would start a second campaign there), and its fork start method copies the Ray
driver's threads, which is unsafe.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, TypeVar

_Result = TypeVar("_Result")


class ChunkPoolError(RuntimeError):
    """A worker failed or exited; the message holds its traceback where it sent one."""


def default_workers(rows: int, rows_per_worker: int, most: int = 16) -> int:
    """Workers for `rows` rows: one per core this process may use, at most `most` and one per
    `rows_per_worker` rows, as each costs about half a second and 100 MB to start; 0 (work in
    this process) where that makes fewer than two or no interpreter can be started."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(cores or 1, most, rows // rows_per_worker)
    return workers if workers >= 2 and sys.executable else 0


class ChunkPool:
    """Maps a function over chunks in worker processes, results in order; in this process
    when `workers` is 0. Each worker holds one chunk at a time, so pipes never deadlock."""

    def __init__(self, workers: int):
        self._workers = [_start_worker() for _ in range(workers)]
        self._busy: set[int] = set()  # pids of workers holding a chunk

    def map(
        self, function: Callable[..., _Result], chunks: Iterable[tuple[Any, ...]]
    ) -> Iterator[_Result]:
        """`function(*chunk)` of every chunk, in order. `function` must be importable by name
        (a module-level function) and the chunks picklable."""
        if not self._workers:
            yield from (function(*chunk) for chunk in chunks)
            return
        idle = deque(self._workers)
        busy: deque[subprocess.Popen[bytes]] = deque()
        for chunk in chunks:
            if not idle:
                worker = busy.popleft()
                yield self._receive(worker)
                idle.append(worker)
            worker = idle.popleft()
            self._busy.add(worker.pid)
            _send(worker, (function, chunk))
            busy.append(worker)
        while busy:
            yield self._receive(busy.popleft())

    def _receive(self, worker: subprocess.Popen[bytes]) -> Any:
        result = _receive(worker)
        self._busy.discard(worker.pid)
        return result

    def close(self) -> None:
        """End the workers: an idle one exits when its stdin closes; one still holding a chunk
        (the caller stopped early) or not exiting is killed."""
        for worker in self._workers:
            if worker.pid in self._busy:
                worker.kill()
            with contextlib.suppress(OSError):
                if worker.stdin is not None:
                    worker.stdin.close()
        for worker in self._workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
        self._workers, self._busy = [], set()

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(source: BinaryIO | None = None, sink: BinaryIO | None = None) -> None:
    """A worker's loop: run each call read from `source` (stdin), write its outcome to `sink`
    (stdout) as (True, result) or (False, traceback text), until `source` ends."""
    source = source or sys.stdin.buffer
    sink = sink or sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries results: a stray print must not corrupt them
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            function, args = pickle.load(source)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, function(*args))
        except Exception:
            reply = (False, traceback.format_exc())
        pickle.dump(reply, sink, protocol=pickle.HIGHEST_PROTOCOL)
        sink.flush()


def _start_worker() -> subprocess.Popen[bytes]:
    """A worker with this process's import path, so it imports what this process does."""
    program = (
        f"import sys; sys.path[:] = {sys.path!r}; "
        "from ftsafe_ray.judge.chunk_pool import serve; serve()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _send(
    worker: subprocess.Popen[bytes], call: tuple[Callable[..., Any], tuple[Any, ...]]
) -> None:
    assert worker.stdin is not None
    try:
        pickle.dump(call, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        worker.stdin.flush()
    except BrokenPipeError:
        raise ChunkPoolError(_exited(worker)) from None


def _receive(worker: subprocess.Popen[bytes]) -> Any:
    assert worker.stdout is not None
    try:
        ok, value = pickle.load(worker.stdout)
    except EOFError:
        raise ChunkPoolError(_exited(worker)) from None
    if not ok:
        raise ChunkPoolError(f"worker process {worker.pid} failed:\n{value}")
    return value


def _exited(worker: subprocess.Popen[bytes]) -> str:
    code = worker.wait()
    return f"worker process {worker.pid} exited (code {code}); its error, if any, is above"
