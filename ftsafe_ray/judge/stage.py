"""Judge stage: keyword verdicts in the driver; rubric verdicts via the actor pool or Batch API."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.identity import (
    rubric_identity,
    verdict_key_for,
)
from ftsafe_ray.plan import Plan, lasting_path
from ftsafe_ray.progress import Progress
from ftsafe_ray.spec import RubricJudgeSpec
from ftsafe_ray.store import DONE_STATUSES, JUDGMENTS, ParquetTable, RunStore
from ftsafe_ray.store.remote import is_remote
from ftsafe_ray.store.run_dir import open_remote_table

if TYPE_CHECKING:
    from ftsafe_ray.judge.online import JudgePool


@dataclass(frozen=True)
class RubricAccess:
    """Where and how to reach the rubric judge."""

    base_url: str | None
    api_key: str


@dataclass(frozen=True)
class JudgeStageResult:
    keyword_new: int
    rubric_new: int
    rubric_skipped_reason: str | None
    rubric_from_cache: int = 0
    rubric_left_by_budget: int = 0


def rubric_access(
    spec: RubricJudgeSpec, environ: dict[str, str] | None = None
) -> RubricAccess | None:
    """The endpoint to use, or None when the rubric judge is off (or 'auto' with no key).

    The key comes from `api_key_file` when it is set, else from the variable `api_key_env`.
    """
    environ = dict(os.environ) if environ is None else environ
    if spec.enabled is False:
        return None
    if spec.api_key_file is not None:
        return RubricAccess(base_url=spec.base_url, api_key=read_api_key_file(spec.api_key_file))
    key = environ.get(spec.api_key_env)
    if key is None and spec.base_url is None:
        if spec.enabled == "auto":
            return None
        raise JudgeError(
            f"judges.rubric.enabled is true but ${spec.api_key_env} is not set; "
            f"export it, set judges.rubric.base_url, or set enabled: auto"
        )
    return RubricAccess(base_url=spec.base_url, api_key=key or "not-needed")


def read_api_key_file(path: str) -> str:
    """The key in `path` (surrounding whitespace dropped), read on this node.

    Errors name the file and never quote what it holds.
    """
    where = Path(path).expanduser()
    try:
        key = where.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise JudgeError(
            f"judges.rubric.api_key_file: cannot read {where} ({reason}) on this node; put the "
            "key there on the node that runs the driver (the head node under `ray job submit`)"
        ) from None
    if not key:
        raise JudgeError(f"judges.rubric.api_key_file: {where} is empty; write the key into it")
    return key


def start_judge_pool(plan: Plan, access: RubricAccess | None) -> JudgePool | None:
    """The online rubric judge's actors, started now so that they are up when the answers
    are (None when the rubric judge is off or uses the Batch API). Close it after the stage."""
    spec = plan.spec.judges.rubric
    if access is None or spec.mode == "batch":
        return None
    from ftsafe_ray.judge.online import JudgePool

    return JudgePool(spec, access)


def plan_generations(plan: Plan, store: RunStore) -> list[dict[str, Any]]:
    """Stored answers that belong to this plan (error rows, which have none, left out), in key
    order."""
    return plan_generation_table(plan, store).sort_by("key").to_pylist()


def plan_generation_table(
    plan: Plan, store: RunStore, columns: list[str] | None = None
) -> pa.Table:
    """`plan_generations` as an Arrow table of `columns` (default: all), filtered in Arrow, in
    the order the rows are stored (sorting a million answers by key is most of a read)."""
    names = columns or store.generations.schema.names
    table = store.generations.latest(list(dict.fromkeys(["key", "status", *names])))
    wanted = pa.array(list({unit.key for unit in plan.generations}), pa.string())
    answered = pc.fill_null(pc.not_equal(table.column("status"), "error"), True)
    keep = pc.and_(pc.is_in(table.column("key"), value_set=wanted), answered)
    return _kept(table, keep).select(names)


def verdict_cache(plan: Plan, store: RunStore, base_dir: Path | None = None) -> ParquetTable:
    """The judgments table verdicts are looked up in: `judges.cache_dir` or the run's own.

    A relative cache_dir is taken from `base_dir`, the campaign file's directory.
    """
    cache_dir = plan.spec.judges.cache_dir
    if cache_dir is None:
        return store.judgments
    if is_remote(cache_dir):
        if store.remote is not None and cache_dir.rstrip("/") == store.remote.join("judgments"):
            return store.judgments
        return open_remote_table(cache_dir, JUDGMENTS, {"ftsafe_ray.spec_hash": plan.spec_hash})
    path = lasting_path(cache_dir, (base_dir or Path.cwd()).resolve(), "judges.cache_dir")
    return ParquetTable(path, JUDGMENTS, {"ftsafe_ray.spec_hash": plan.spec_hash})


def run_judge_stage(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    access: RubricAccess | None,
    retry_failed: bool = False,
    base_dir: Path | None = None,
    pool: JudgePool | None = None,
) -> JudgeStageResult:
    """Judge every stored answer of the plan not judged yet; verdicts are cached by content key.

    `base_dir` (the campaign file's directory) resolves a relative `judges.cache_dir`; `pool`:
    judge actors started ahead (see `start_judge_pool`), else the stage starts its own.
    """
    keyword_new = 0
    if plan.spec.judges.keyword.enabled:
        keyword_new = _keyword(plan, store, progress)
    if access is None:
        return JudgeStageResult(keyword_new, 0, "rubric judge off (no endpoint or key configured)")
    generations = plan_generations(plan, store)
    done = store.judgments.done_keys()
    failed = store.judgments.done_keys({"error"})
    spec = plan.spec.judges.rubric
    identity = rubric_identity(spec)
    # Answers to utility benchmarks go to the utility rubric only (judge/utility_run.py).
    from ftsafe_ray.judge.utility import utility_references
    from ftsafe_ray.judge.utility_run import run_utility_pass, utility_todo

    references = dict(utility_references(plan.generations))
    rated = utility_todo(plan, generations, references, done)
    todo: dict[str, dict[str, Any]] = {}
    for row in generations:
        if row["key"] in references:
            continue
        key = verdict_key_for(identity, row)
        if key not in done:
            todo.setdefault(key, row)
    cache = verdict_cache(plan, store, base_dir)
    # A verdict in the shared cache replaces a local error for free, retry-failed or not.
    from_cache = _reuse_cached(cache, store, todo) + _reuse_cached(cache, store, rated)
    if from_cache:
        progress.log(f"rubric: {from_cache} verdict(s) reused from {cache.directory}")
    if not retry_failed:
        todo = {key: row for key, row in todo.items() if key not in failed}
        rated = {key: row for key, row in rated.items() if key not in failed}
    from ftsafe_ray.judge.rubric_run import RubricRun

    rubric = RubricRun(plan, store, progress, access, todo, cache, pool)
    rubric_new = rubric.run()
    stop_reason = rubric.stop_reason
    if stop_reason is None:  # a spent budget stops the utility pass too
        utility_new, stop_reason = run_utility_pass(
            plan, store, progress, access, rated, cache, pool
        )
        rubric_new += utility_new
    return JudgeStageResult(keyword_new, rubric_new, stop_reason, from_cache, rubric.left_by_budget)


def estimate_rubric_cost(plan: Plan, store: RunStore, base_dir: Path | None = None):
    """Tokens and dollars the rubric judge still needs for this plan (None when it is off).

    Answers not generated yet count as `sampling.max_new_tokens` long.
    """
    from ftsafe_ray.judge.cost import estimate_cost, placeholder_answer, spent_usd

    spec = plan.spec.judges.rubric
    if spec.enabled is False:
        return None
    identity = rubric_identity(spec)
    stored = {row["key"]: row for row in plan_generations(plan, store)}
    done = store.judgments.done_keys() | verdict_cache(plan, store, base_dir).done_keys()
    pairs: dict[str, tuple[str, str]] = {}
    missing = placeholder_answer(plan.spec.sampling.max_new_tokens)
    from ftsafe_ray.judge.utility import utility_identity, utility_references, with_reference

    references = utility_references(plan.generations)  # rated by the utility rubric
    rated = utility_identity(spec) if references else identity
    for unit in plan.generations:
        row = stored.get(unit.key)
        if row is None:
            pairs[unit.key] = (unit.item.prompt, missing)
            continue
        if unit.key in references:
            row = {**row, "prompt": with_reference(row["prompt"], references[unit.key])}
        key = verdict_key_for(rated if unit.key in references else identity, row)
        if key not in done:
            pairs[key] = (row["prompt"], row["response"])
    columns = ["judge", "judge_model", "cost_usd"]
    spent = spent_usd(store.judgments.rows(columns), spec.model)
    return estimate_cost(plan.spec.judges, pairs.values(), spent)


def _reuse_cached(cache: ParquetTable, store: RunStore, todo: dict[str, dict[str, Any]]) -> int:
    """Copy verdicts another campaign already paid for into this run; drop them from `todo`."""
    if cache.directory == store.judgments.directory or not todo:
        return 0
    # Paid by whoever wrote the cache: this campaign's copy costs nothing.
    rows = [
        {
            **{k: v for k, v in row.items() if k != "created_at"},
            "generation_key": todo[row["key"]]["key"],
            "cost_usd": 0.0,
        }
        for row in cache.rows()
        if row["key"] in todo and row["status"] in DONE_STATUSES
    ]
    store.judgments.write(rows)
    for row in rows:
        todo.pop(row["key"])
    return len(rows)


def _keyword(plan: Plan, store: RunStore, progress: Progress) -> int:
    """Keyword verdicts of every answer under each of the plan's phrase sets, judged over Arrow
    columns by worker processes (keyword_batch.py) and written in large shards."""
    from ftsafe_ray.judge.keyword_batch import judge_keywords

    answers = plan_generation_table(plan, store, ["key", "prompt", "response"])
    # A row without answer text has nothing to judge.
    answers = _kept(answers, pc.is_valid(answers.column("response")))
    done = _finished_verdict_keys(store.judgments)
    write = store.judgments.write_table
    return judge_keywords(answers, plan.keyword_sets, done, progress, write)


def _kept(table: pa.Table, mask: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The rows where `mask` is true; the table itself when all are (a filter copies it)."""
    return table if pc.all(mask).as_py() in (True, None) else table.filter(mask)


def _finished_verdict_keys(judgments: ParquetTable) -> pa.Array:
    """`judgments.done_keys()` as an Arrow array, for columnar lookups."""
    return judgments.done_key_array(DONE_STATUSES)
