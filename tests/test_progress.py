"""Plain progress lines stay whole when stages report from several threads at once."""

from __future__ import annotations

import io
import re
import threading
import time

from ftsafe_ray.progress import PlainProgress


class SlowStream(io.StringIO):
    """A stream that yields to other threads in every write, as a pipe to a busy reader can."""

    def write(self, text: str) -> int:
        time.sleep(0.0005)
        return super().write(text)


def test_lines_from_many_threads_never_run_into_each_other():
    stream = SlowStream()
    progress = PlainProgress(stream, interval_s=0.0)

    def stage(name: str) -> None:
        progress.start(name, total=20)
        for _ in range(20):
            progress.advance(name)
            progress.log(f"note from {name}")
        progress.finish(name)

    threads = [threading.Thread(target=stage, args=(f"s{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    # Per stage: start, 20 advances, 20 notes, done.
    assert len(lines) == 6 * 42
    whole = re.compile(r"^(\[s\d\] (start: 20 to do|\d+/20|done: 20/20 in [\d.]+s)|note from s\d)$")
    assert [line for line in lines if not whole.match(line)] == []
