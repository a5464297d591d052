"""Judging while generation runs: answers flow to the judges as they are stored.

A thread runs a judge pass (keyword, then the rubric on the pool started ahead) whenever the
generate stage has stored new shards, at most every `interval_s`; a pass judges only what is
not judged yet, so passes never overlap in work and the judge stage after generation does
only what is left. A pass is bounded by the answers stored when it starts, and the rubric
sends at the provider's pace, so the judges never run ahead of generation nor hold more than
one pass of answers (backpressure: the next pass starts when this one is done).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ftsafe_ray.errors import FtsafeError
from ftsafe_ray.judge.online import JudgePool
from ftsafe_ray.judge.stage import JudgeStageResult, RubricAccess, run_judge_stage
from ftsafe_ray.plan import Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.store import RunStore

INTERVAL_S = 10.0


@dataclass
class _Passes:
    """What the passes judged, summed."""

    keyword_new: int = 0
    rubric_new: int = 0
    rubric_from_cache: int = 0
    passes: int = 0
    error: str | None = None


class PassProgress:
    """Shows a stage run in several passes as one: later passes add to its total, and only
    the stage's last pass (after generation) finishes it."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.started: set[str] = set()
        self.final = False

    def start(self, stage: str, total: int, done: int = 0) -> None:
        if stage in self.started:
            self.progress.extend(stage, total - done)
        else:
            self.started.add(stage)
            self.progress.start(stage, total, done)

    def extend(self, stage: str, count: int) -> None:
        self.progress.extend(stage, count)

    def advance(self, stage: str, count: int = 1) -> None:
        self.progress.advance(stage, count)

    def finish(self, stage: str) -> None:
        if self.final:
            self.progress.finish(stage)

    def log(self, message: str) -> None:
        self.progress.log(message)

    def close(self) -> None:
        pass


class LiveJudge:
    """Judge passes in a thread while generation runs (`start`, then `stop` when it ends)."""

    def __init__(
        self,
        plan: Plan,
        store: RunStore,
        progress: PassProgress,
        access: RubricAccess | None,
        pool: JudgePool | None,
        retry_failed: bool = False,
        base_dir: Path | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.plan, self.store, self.progress = plan, store, progress
        # The Batch API judges in jobs that take hours: only the online judge runs live.
        online = plan.spec.judges.rubric.mode != "batch"
        self.access, self.pool = (access if online else None), pool
        self.retry_failed, self.base_dir = retry_failed, base_dir
        self.interval_s = interval_s
        self.passes = _Passes()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LiveJudge:
        # Answers stored before this run are the last pass's: a pass starts only once this
        # run's generation has stored something (a rerun with nothing to generate makes none).
        self._thread = threading.Thread(
            target=self._run, args=(self._shards(),), name="live-judge", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> JudgeStageResult:
        """Stop after the pass under way (its rubric requests in flight are answered and
        stored, no new ones sent); what the passes judged."""
        self._stopping.set()
        if self.pool is not None:
            self.pool.stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self.pool is not None:
            self.pool.stopping.clear()
        return JudgeStageResult(
            self.passes.keyword_new, self.passes.rubric_new, None, self.passes.rubric_from_cache
        )

    def _shards(self) -> int:
        directory = self.store.generations.directory
        return sum(1 for _ in directory.glob("part-*.parquet")) if directory.is_dir() else 0

    def _run(self, judged_shards: int) -> None:
        while not self._stopping.wait(self.interval_s):
            shards = self._shards()
            if shards == judged_shards:
                continue
            judged_shards = shards
            try:
                result = run_judge_stage(
                    self.plan,
                    self.store,
                    self.progress,
                    self.access,
                    self.retry_failed,
                    self.base_dir,
                    self.pool,
                )
            except Exception as error:  # whatever it is, the last pass judges it all again
                # Nothing is lost: the judge stage after generation does it all again and
                # reports the error there if it persists (actors lost to a Ctrl-C, say).
                reason = str(error) if isinstance(error, FtsafeError) else type(error).__name__
                self.passes.error = reason
                self.progress.log(f"judge: judging during generation stopped ({reason})")
                return
            self.passes.keyword_new += result.keyword_new
            self.passes.rubric_new += result.rubric_new
            self.passes.rubric_from_cache += result.rubric_from_cache
            self.passes.passes += 1


def combine(live: JudgeStageResult, final: JudgeStageResult) -> JudgeStageResult:
    """The judge stage's result over the live passes and the pass after generation."""
    return replace(
        final,
        keyword_new=live.keyword_new + final.keyword_new,
        rubric_new=live.rubric_new + final.rubric_new,
        rubric_from_cache=live.rubric_from_cache + final.rubric_from_cache,
    )
