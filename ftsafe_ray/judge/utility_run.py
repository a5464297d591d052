"""One pass of the utility rubric over the stored answers of `kind: utility` benchmarks, on the
rubric judge's pool and limiter (each request names the utility rubric)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftsafe_ray.judge.identity import verdict_key_for
from ftsafe_ray.judge.utility import UTILITY, utility_identity, with_reference

if TYPE_CHECKING:
    from ftsafe_ray.judge.online import JudgePool
    from ftsafe_ray.judge.stage import RubricAccess
    from ftsafe_ray.plan import Plan
    from ftsafe_ray.progress import Progress
    from ftsafe_ray.store import ParquetTable, RunStore


def utility_todo(
    plan: Plan,
    generations: list[dict[str, Any]],
    references: dict[str, str | None],
    done: set[str],
) -> dict[str, dict[str, Any]]:
    """Verdict key → the answer row to rate (its `prompt` carrying the reference), for the
    utility answers not rated yet."""
    identity = utility_identity(plan.spec.judges.rubric)
    todo: dict[str, dict[str, Any]] = {}
    for row in generations:
        if row["key"] not in references:
            continue
        asked = {**row, "prompt": with_reference(row["prompt"], references[row["key"]])}
        key = verdict_key_for(identity, asked)
        if key not in done:
            todo.setdefault(key, asked)
    return todo


def run_utility_pass(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    access: RubricAccess,
    todo: dict[str, dict[str, Any]],
    cache: ParquetTable,
    pool: JudgePool | None,
) -> tuple[int, str | None]:
    """Rate `todo` with the utility rubric; (verdicts stored, why some were left, if so)."""
    from ftsafe_ray.judge.rubric_run import RubricRun

    if not todo:
        return 0, None
    if plan.spec.judges.rubric.mode == "batch":
        return 0, (
            f"utility: {len(todo)} answer(s) left unrated; utility benchmarks are rated online "
            "only (judges.rubric.mode: online)"
        )
    run = RubricRun(plan, store, progress, access, todo, cache, pool, rubric_name=UTILITY)
    count = run.run()
    return count, run.stop_reason
