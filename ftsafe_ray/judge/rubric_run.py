"""One pass of the rubric judge over the answers still to judge: online or by Batch API."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.identity import RUBRIC
from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult
from ftsafe_ray.spec import RubricJudgeSpec
from ftsafe_ray.store import DONE_STATUSES, ParquetTable, ShardBuffer

# Requests per actor call: large enough to amortise Ray's per-call cost (~1 ms), small enough
# that a slow retry holds back few finished rows.
RUBRIC_BATCH = 16


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
    """One pass of the rubric judge over `todo`: online through actors, or by Batch API."""

    def __init__(self, plan, store, progress, access, todo, cache: ParquetTable) -> None:
        from ftsafe_ray.judge.cost import price_of, spent_usd
        from ftsafe_ray.judge.rubrics import get_rubric

        self.plan, self.store, self.progress, self.access = plan, store, progress, access
        self.spec: RubricJudgeSpec = plan.spec.judges.rubric
        self.todo = todo
        self.rubric = get_rubric(self.spec.rubric)
        self.cache = cache
        self.price = price_of(plan.spec.judges)
        self.batch = self.spec.mode == "batch"
        columns = ["judge", "judge_model", "cost_usd"]
        spent = spent_usd(store.judgments.rows(columns), self.spec.model)
        budget = self.spec.budget_usd
        self.remaining_usd = None if budget is None else budget - spent
        self.stop_reason: str | None = None
        self.left_by_budget = 0
        self._cache_buffer: ShardBuffer | None = None
        self._prices = plan.spec.judges.prices

    def requests(self) -> list[JudgeRequest]:
        return [
            JudgeRequest(key=key, instruction=row["prompt"], answer=row["response"])
            for key, row in self.todo.items()
        ]

    def max_cost(self, request: JudgeRequest) -> float:
        """The most one request can cost: its prompt and a reply of max_tokens, and online
        the one retry of a reply cut off there (the prompt again, a longer reply)."""
        from ftsafe_ray.judge.cost import cost_usd, request_tokens
        from ftsafe_ray.judge.rubric_client import truncation_retry_max_tokens

        try:
            messages = self.rubric.build_messages(request.instruction, request.answer)
        except Exception:  # its row will be an error, and no call is made for it
            return 0.0
        prompt = request_tokens(messages)
        cost = cost_usd(self.price, prompt, self.spec.max_tokens, self.batch) or 0.0
        retry = None if self.batch else truncation_retry_max_tokens(self.spec.max_tokens)
        if retry is not None:
            cost += cost_usd(self.price, prompt, retry, self.batch) or 0.0
        return cost

    def affordable(self, requests: list[JudgeRequest], reserved: float) -> list[JudgeRequest]:
        """The longest prefix of `requests` whose worst-case cost fits what is left."""
        if self.remaining_usd is None:
            return requests
        out = []
        for request in requests:
            cost = self.max_cost(request)
            if reserved + cost > self.remaining_usd:
                break
            reserved += cost
            out.append(request)
        return out

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
            if self.remaining_usd is not None:
                self.remaining_usd -= cost or 0.0
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
        from ftsafe_ray.judge.batch import STATE_DIR, BatchJudge

        judge = BatchJudge(
            self.spec, self.access.api_key, self.access.base_url,
            self.store.root / STATE_DIR, self.rubric,
        )  # fmt: skip
        try:
            # Recover first: a job that was never created gives its keys back to `fresh`.
            pending = [j for j in map(judge.recover, judge.pending()) if j is not None]
            in_jobs = {key for job in pending for key in job.keys}
            stored = self.store.judgments.done_keys()
            for job in pending:
                if set(job.keys) <= stored:  # its rows were stored before a crash
                    job.status = "ingested"
                    job.save(judge.state_dir)
            pending = [job for job in pending if job.status != "ingested"]
            requests = self.requests()
            fresh = [r for r in requests if r.key not in in_jobs]
            # Jobs already submitted will be billed: count them against the budget first.
            reserved = sum(self.max_cost(r) for r in requests if r.key in in_jobs)
            generation_keys = {key: row["key"] for key, row in self.todo.items()}
            jobs = pending + judge.submit(self.affordable(fresh, reserved), generation_keys)
            self.write(buffer, judge.unbuildable)
            ingest = [len(judge.unbuildable)]

            def on_results(job: Any, results: list[JudgeResult]) -> None:
                # Every paid result is kept, to do or not (a spec change or a restart may have
                # taken its key off the list); only a verdict stored already is not written again.
                new = [r for r in results if r.key in self.todo or r.key not in stored]
                self.write(buffer, new, job)
                self.flush(buffer)  # a job's rows are stored before it is marked ingested
                ingest[0] += sum(1 for r in results if r.key in self.todo)

            judge.collect(jobs, on_results)
            return ingest[0]
        finally:
            judge.close()

    def _online(self, buffer: ShardBuffer) -> int:
        import ray

        from ftsafe_ray.judge.cluster import get_rate_budget, release_rate_budget
        from ftsafe_ray.judge.pool import make_rubric_judge_actor

        if not self.affordable(self.requests()[:1], 0.0):
            return 0  # nothing left to do, or not one more call fits the budget
        spec, access = self.spec, self.access
        budget = get_rate_budget(spec, access.base_url)
        # The share is what each actor paces at alone, should the shared budget be lost.
        share = 1.0 / spec.num_actors
        actors = [
            make_rubric_judge_actor(spec, access.api_key, access.base_url, share, budget)
            for _ in range(spec.num_actors)
        ]
        try:
            # The endpoint check goes out first, but the first batches go right behind it
            # instead of a round trip later (see _dispatch).
            return self._dispatch(actors, buffer, actors[0].check.remote())
        finally:
            for actor in actors:
                ray.kill(actor)
            release_rate_budget(budget)

    def _dispatch(self, actors: list[Any], buffer: ShardBuffer, check: Any = None) -> int:
        """Keep every actor fed with a few batches; stop sending when the budget is spent.

        Until the endpoint `check` passes, each actor gets one batch and no row is stored;
        should it fail, only the verdicts already paid for are kept (see _confirm). A batch
        whose actor died is stored as error rows (its requests may have been paid;
        --retry-failed redoes them) and the other actors carry on.
        """
        import ray

        from ftsafe_ray.judge.rubric_client import error_result

        alive = list(actors)
        requests = self.requests()
        window = len(alive) * (math.ceil(2 * self.spec.max_concurrency / RUBRIC_BATCH) + 2)
        in_flight: dict[Any, tuple[Any, list[JudgeRequest], float]] = {}
        reserved, sent, count, turn = 0.0, 0, 0, 0
        while True:
            limit = window if check is None else len(alive)
            while alive and sent < len(requests) and len(in_flight) < limit:
                batch = self.affordable(requests[sent : sent + RUBRIC_BATCH], reserved)
                if not batch:
                    break
                cost = sum(self.max_cost(r) for r in batch) if self.price else 0.0
                actor = alive[turn % len(alive)]
                in_flight[actor.judge_batch.remote(batch)] = (actor, batch, cost)
                reserved += cost
                sent += len(batch)
                turn += 1
            if not in_flight:
                if sent < len(requests) and not alive:
                    raise JudgeError(
                        f"judges.rubric: every judge actor died; {len(requests) - sent} "
                        "answer(s) left unjudged, rerun to resume"
                    )
                return count
            if check is not None:
                # The first batches are out: once the check passes, the window opens in full.
                self._confirm(check, in_flight, buffer)
                check = None
                continue
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, batch, cost = in_flight.pop(ref)
            reserved -= cost
            try:
                results = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                if actor in alive:
                    alive.remove(actor)
                message = f"judge actor died: {type(error).__name__}"
                results = [error_result(r.key, message, 0, 0.0) for r in batch]
            self.write(buffer, results)
            count += len(results)

    def _confirm(self, check: Any, in_flight: dict[Any, Any], buffer: ShardBuffer) -> None:
        """Raise JudgeError in one line if the endpoint check failed, after storing what the
        batches sent beside it had answered (paid verdicts; their errors are left to do)."""
        import ray

        try:
            ray.get(check)
        except ray.exceptions.RayTaskError as error:
            for ref in in_flight:
                with contextlib.suppress(ray.exceptions.RayError):
                    self.write(buffer, [r for r in ray.get(ref) if r.status != "error"])
            cause = error.cause if isinstance(error.cause, JudgeError) else error
            raise JudgeError(f"judges.rubric: {cause}") from None
