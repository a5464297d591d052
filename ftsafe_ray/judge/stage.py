"""Judge stage: keyword verdicts in the driver, rubric verdicts through the judge actor pool."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ftsafe_ray import keys
from ftsafe_ray.errors import JudgeError
from ftsafe_ray.plan import Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.spec import RubricJudgeSpec
from ftsafe_ray.store import RunStore, ShardBuffer

KEYWORD = "keyword"
RUBRIC = "rubric"
RUBRIC_BATCH = 16


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


def keyword_identity() -> dict[str, Any]:
    from ftsafe_ray.judge.keyword import KEYWORD_JUDGE_VERSION

    return {"judge": KEYWORD, "version": KEYWORD_JUDGE_VERSION}


def rubric_identity(spec: RubricJudgeSpec) -> dict[str, Any]:
    """What determines a rubric verdict: the endpoint's URL and limits do not."""
    from ftsafe_ray.judge.rubric import RUBRIC_VERSION

    return {
        "judge": RUBRIC,
        "model": spec.model,
        "version": RUBRIC_VERSION,
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }


def rubric_access(
    spec: RubricJudgeSpec, environ: dict[str, str] | None = None
) -> RubricAccess | None:
    """The endpoint to use, or None when the rubric judge is off (or 'auto' with no key)."""
    environ = dict(os.environ) if environ is None else environ
    if spec.enabled is False:
        return None
    key = environ.get(spec.api_key_env)
    if key is None and spec.base_url is None:
        if spec.enabled == "auto":
            return None
        raise JudgeError(
            f"judges.rubric.enabled is true but ${spec.api_key_env} is not set; "
            f"export it, set judges.rubric.base_url, or set enabled: auto"
        )
    return RubricAccess(base_url=spec.base_url, api_key=key or "not-needed")


def verdict_key_for(identity: dict[str, Any], generation: dict[str, Any]) -> str:
    return keys.verdict_key(
        judge=identity, instruction=generation["prompt"], answer=generation["response"]
    )


def plan_generations(plan: Plan, store: RunStore) -> list[dict[str, Any]]:
    """Stored generation rows that belong to this plan."""
    wanted = {unit.key for unit in plan.generations}
    return [row for row in store.generations.rows() if row["key"] in wanted]


def run_judge_stage(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    access: RubricAccess | None,
    retry_failed: bool = False,
) -> JudgeStageResult:
    """Judge every stored answer of the plan not judged yet; verdicts are cached by content key."""
    generations = plan_generations(plan, store)
    done = store.judgments.done_keys()
    failed = store.judgments.done_keys({"error"})
    keyword_new = 0
    if plan.spec.judges.keyword.enabled:
        keyword_new = _keyword(generations, done, store, progress)
    rubric_new, skipped_reason = 0, None
    if access is None:
        skipped_reason = "rubric judge off (no endpoint or key configured)"
    else:
        rubric_new = _rubric(plan, generations, done, failed, retry_failed, store, progress, access)
    return JudgeStageResult(keyword_new, rubric_new, skipped_reason)


def _keyword(generations, done, store, progress) -> int:
    from ftsafe_ray.judge.keyword import KEYWORD_JUDGE_VERSION, keyword_verdict

    identity = keyword_identity()
    todo: dict[str, dict[str, Any]] = {}
    for row in generations:
        key = verdict_key_for(identity, row)
        if key not in done:
            todo.setdefault(key, row)
    progress.start("keyword", total=len(todo))
    rows = []
    for key, generation in todo.items():
        verdict = keyword_verdict(generation["response"])
        rows.append(
            {
                "key": key,
                "generation_key": generation["key"],
                "judge": KEYWORD,
                "judge_model": None,
                "judge_version": KEYWORD_JUDGE_VERSION,
                "status": "ok",
                "refused": verdict.refused,
                "degenerate": verdict.degenerate,
                "reason": verdict.matched_phrase or verdict.degenerate_reason,
                "attempts": 0,
            }
        )
    store.judgments.write(rows)
    progress.advance("keyword", len(rows))
    progress.finish("keyword")
    return len(rows)


def _rubric(plan, generations, done, failed, retry_failed, store, progress, access) -> int:
    import ray

    from ftsafe_ray.judge.pool import make_rubric_judge_actor
    from ftsafe_ray.judge.rubric import RUBRIC_VERSION
    from ftsafe_ray.judge.rubric_client import JudgeRequest

    spec = plan.spec.judges.rubric
    identity = rubric_identity(spec)
    todo: dict[str, dict[str, Any]] = {}
    for row in generations:
        key = verdict_key_for(identity, row)
        if key not in done and (retry_failed or key not in failed):
            todo.setdefault(key, row)
    progress.start("rubric", total=len(todo))
    if not todo:
        progress.finish("rubric")
        return 0
    actor = make_rubric_judge_actor(spec, access.api_key, access.base_url)
    try:
        ray.get(actor.check.remote())
    except ray.exceptions.RayTaskError as error:
        ray.kill(actor)
        cause = error.cause if isinstance(error.cause, JudgeError) else error
        raise JudgeError(f"judges.rubric: {cause}") from None
    requests = [
        JudgeRequest(key=key, instruction=row["prompt"], answer=row["response"])
        for key, row in todo.items()
    ]
    batches = [requests[i : i + RUBRIC_BATCH] for i in range(0, len(requests), RUBRIC_BATCH)]
    in_flight = {actor.judge_batch.remote(batch): batch for batch in batches}
    count = 0
    try:
        with ShardBuffer(store.judgments, max_rows=64, max_seconds=10) as buffer:
            while in_flight:
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                in_flight.pop(ref)
                results = ray.get(ref)
                buffer.add(
                    [
                        {
                            "key": result.key,
                            "generation_key": todo[result.key]["key"],
                            "judge": RUBRIC,
                            "judge_model": spec.model,
                            "judge_version": RUBRIC_VERSION,
                            "status": result.status,
                            "score": result.score,
                            "reason": result.reason,
                            "raw": result.raw,
                            "error": result.error,
                            "attempts": result.attempts,
                            "latency_s": result.latency_s,
                        }
                        for result in results
                    ]
                )
                count += len(results)
                progress.advance("rubric", len(results))
    finally:
        ray.kill(actor)
    progress.finish("rubric")
    return count
