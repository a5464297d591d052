"""One pass of the rubric judge over the answers still to judge: online (judge/online.py) or by
Batch API (judge/batch_run.py), within the spend ledger's budget (judge/ledger.py); this module
turns their results into stored rows."""

from __future__ import annotations

import contextlib
from typing import Any

from ftsafe_ray.judge.identity import RUBRIC
from ftsafe_ray.judge.ledger import SpendLedger
from ftsafe_ray.judge.online import RUBRIC_BATCH, JudgePool, judge_online
from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult
from ftsafe_ray.spec import RubricJudgeSpec
from ftsafe_ray.store import DONE_STATUSES, ParquetTable, ShardBuffer

__all__ = ["RUBRIC_BATCH", "RubricRun", "verdict_row"]


def verdict_row(
    result: JudgeResult, generation_key: str | None, model: str, version: str, cost: float | None
) -> dict:
    """The judgments-table row of one rubric result."""
    return {
        "key": result.key,
        "generation_key": generation_key,
        "judge": RUBRIC,
        "judge_model": model,
        "judge_version": version,
        "status": result.status,
        "score": result.score,
        "refused": result.refused,
        "reason": result.reason,
        "raw": result.raw,
        "error": result.error,
        "attempts": result.attempts,
        "latency_s": result.latency_s,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": cost,
        "convincing": result.convincing,
        "specific": result.specific,
        "strongreject_score": result.strongreject_score,
    }


class _CacheBuffer(ShardBuffer):
    """Rows for a shared verdict cache (`judges.cache_dir`), which may be another run's
    judgments/: spend belongs to the campaign that paid, so a row goes there with cost_usd 0
    (its tokens kept) and with its real cost only in this run's own judgments. That run's
    `budget_usd` and `ftsafe status` spend count only what it paid itself.

    A key the cache gained meanwhile (another campaign judged it too) is not written over:
    its row there may be that run's own, paid one.
    """

    def add(self, rows: list[dict[str, Any]]) -> None:
        super().add([{**row, "cost_usd": 0.0} for row in rows])

    def flush(self) -> None:
        if self.pending:
            held = self.table.done_keys()
            self.pending = [row for row in self.pending if row["key"] not in held]
        super().flush()


class RubricRun:
    """One pass of the rubric judge over `todo` (verdict key → stored answer)."""

    def __init__(
        self,
        plan,
        store,
        progress,
        access,
        todo,
        cache: ParquetTable,
        pool: JudgePool | None = None,
        rubric_name: str | None = None,
    ) -> None:
        from ftsafe_ray.judge.cost import price_of, spent_usd
        from ftsafe_ray.judge.rubrics import get_rubric

        self.plan, self.store, self.progress, self.access = plan, store, progress, access
        self.spec: RubricJudgeSpec = plan.spec.judges.rubric
        # Another built-in rubric on the same pool (utility answers): named on each request.
        self.routed = rubric_name
        if rubric_name is not None:
            self.spec = self.spec.model_copy(update={"rubric": rubric_name})
        self.todo = todo
        self.rubric = get_rubric(self.spec.rubric)
        self.cache = cache
        self.price = price_of(plan.spec.judges)
        self.batch = self.spec.mode == "batch"
        columns = ["judge", "judge_model", "cost_usd"]
        spent = spent_usd(store.judgments.rows(columns), self.spec.model)
        self.ledger = SpendLedger(self.spec, self.rubric, self.price, spent, self.batch)
        self.stop_reason: str | None = None
        self.left_by_budget = 0
        self._cache_buffer: ShardBuffer | None = None
        self._prices = plan.spec.judges.prices
        self.pool = pool  # judge actors started ahead (online mode), or None to start them here

    @property
    def remaining_usd(self) -> float | None:
        return self.ledger.remaining_usd

    def requests(self) -> list[JudgeRequest]:
        return [
            JudgeRequest(
                key=key, instruction=row["prompt"], answer=row["response"], rubric=self.routed
            )
            for key, row in self.todo.items()
        ]

    def write(self, buffer: ShardBuffer, results: list[JudgeResult], job: Any = None) -> None:
        """Store results; those of a Batch API `job` may include keys no longer to do, which
        are labelled from the job's own state (model, version, generation key)."""
        from ftsafe_ray.judge.cost import cost_usd

        model = (job and job.judge_model) or self.spec.model
        version = (job and job.judge_version) or self.rubric.version
        price = self.price if model == self.spec.model else self._prices.get(model)
        rows = []
        for result in results:
            cost = cost_usd(price, result.prompt_tokens, result.completion_tokens, self.batch)
            if result.key in self.todo:
                generation_key = self.todo[result.key]["key"]
            else:
                generation_key = job.generation_keys.get(result.key) if job else None
            rows.append(verdict_row(result, generation_key, model, version, cost))
            self.ledger.charge(cost)
        buffer.add(rows)
        if self._cache_buffer is not None:
            # Errors are not verdicts: only paid, final rows go to the shared cache.
            self._cache_buffer.add([dict(r) for r in rows if r["status"] in DONE_STATUSES])
        self.progress.advance(RUBRIC, sum(1 for r in results if r.key in self.todo))

    def flush(self, buffer: ShardBuffer) -> None:
        buffer.flush()
        if self._cache_buffer is not None:
            self._cache_buffer.flush()

    def run(self) -> int:
        self.progress.start(RUBRIC, total=len(self.todo))
        shared = self.cache.directory != self.store.judgments.directory
        try:
            with contextlib.ExitStack() as stack:
                # Paid verdicts are stored within a second of arriving (or every 64), so a
                # killed driver loses at most that much paid work.
                buffer = stack.enter_context(ShardBuffer(self.store.judgments, 64, 1.0))
                if shared:
                    self._cache_buffer = stack.enter_context(_CacheBuffer(self.cache, 256, 30))
                count = self._batch(buffer) if self.batch else self._online(buffer)
        finally:
            self._cache_buffer = None
            self.progress.finish(RUBRIC)
        if self.remaining_usd is not None:
            self.left_by_budget = len(self.todo) - count
        if self.left_by_budget:
            self.stop_reason = (
                f"judges.rubric.budget_usd ({self.spec.budget_usd:g}) reached: "
                f"{self.left_by_budget} answer(s) left unjudged; raise budget_usd and rerun "
                "to continue"
            )
        return count

    def _batch(self, buffer: ShardBuffer) -> int:
        from ftsafe_ray.judge.batch_run import judge_by_batch

        return judge_by_batch(
            self.spec,
            self.access,
            self.store.root,
            self.rubric,
            self.requests(),
            {key: row["key"] for key, row in self.todo.items()},
            self.store.judgments.done_keys(),
            self.ledger,
            lambda results, job: self.write(buffer, results, job),
            lambda: self.flush(buffer),
        )

    def _online(self, buffer: ShardBuffer) -> int:
        return judge_online(
            self.spec,
            self.access,
            self.requests(),
            self.ledger,
            lambda results: self.write(buffer, results),
            self.pool,
        )
