"""The rubric judge by Batch API: recover the jobs of earlier runs, submit what is left and fits
the budget, and store every paid result as its job completes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ftsafe_ray.judge.ledger import SpendLedger
from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult
from ftsafe_ray.judge.rubrics import Rubric
from ftsafe_ray.spec import RubricJudgeSpec


def judge_by_batch(
    spec: RubricJudgeSpec,
    access: Any,
    run_root: Path,
    rubric: Rubric,
    requests: list[JudgeRequest],
    generation_keys: Mapping[str, str],
    stored: set[str],
    ledger: SpendLedger,
    write: Callable[[list[JudgeResult], Any], None],
    flush: Callable[[], None],
) -> int:
    """Judge `requests` (verdict key → generation key in `generation_keys`) by Batch API jobs;
    `stored` are the verdict keys already in the store. Returns how many of `requests` got a
    row. `write(results, job)` stores results (job None for requests that could not be built)
    and `flush()` makes them durable before a job is marked ingested."""
    from ftsafe_ray.judge.batch import STATE_DIR, BatchJudge

    judge = BatchJudge(spec, access.api_key, access.base_url, run_root / STATE_DIR, rubric)
    try:
        # Recover first: a job that was never created gives its keys back to `fresh`.
        pending = [j for j in map(judge.recover, judge.pending()) if j is not None]
        in_jobs = {key for job in pending for key in job.keys}
        for job in pending:
            if set(job.keys) <= stored:  # its rows were stored before a crash
                job.status = "ingested"
                job.save(judge.state_dir)
        pending = [job for job in pending if job.status != "ingested"]
        fresh = [r for r in requests if r.key not in in_jobs]
        # Jobs already submitted will be billed: count them against the budget first.
        reserved = sum(ledger.max_cost(r) for r in requests if r.key in in_jobs)
        jobs = pending + judge.submit(ledger.affordable(fresh, reserved), dict(generation_keys))
        write(judge.unbuildable, None)
        ingested = [len(judge.unbuildable)]

        def on_results(job: Any, results: list[JudgeResult]) -> None:
            # Every paid result is kept, to do or not (a spec change or a restart may have
            # taken its key off the list); only a verdict stored already is not written again.
            new = [r for r in results if r.key in generation_keys or r.key not in stored]
            write(new, job)
            flush()  # a job's rows are stored before it is marked ingested
            ingested[0] += sum(1 for r in results if r.key in generation_keys)

        judge.collect(jobs, on_results)
        return ingested[0]
    finally:
        judge.close()
