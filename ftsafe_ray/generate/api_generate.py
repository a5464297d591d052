"""Answers of API models (a base model id, or the model id an API fine-tune produced) through
chat completions: the judge's client (retries through the limiter, never raising for a row),
paced by a cluster-wide rate budget of their own, each answer stored as exactly one row."""

from __future__ import annotations

import asyncio
from typing import Any

from ftsafe_ray.api_access import ApiAccess, api_access, generation_cost
from ftsafe_ray.finetune.api_stage import spent_usd
from ftsafe_ray.judge.limiter import estimate_request_tokens
from ftsafe_ray.plan import GenerationUnit, Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.spec import BaseModelSpec, RubricJudgeSpec
from ftsafe_ray.store import RunStore, ShardBuffer

BACKEND = "openai"


def is_api_model(plan: Plan, model_name: str) -> bool:
    return plan.model_spec(model_name).provider == "openai"


def client_spec(model: BaseModelSpec) -> RubricJudgeSpec:
    """The judge client's settings for generating with `model`: its endpoint, limits and
    retries. The budget it paces through is named after this spec's model, one per base model
    and endpoint, apart from any judge's."""
    api = model.endpoint()
    return RubricJudgeSpec(
        enabled=True,
        model=f"generate:{model.path}",
        base_url=api.base_url,
        api_key_env=api.api_key_env,
        api_key_file=api.api_key_file,
        max_concurrency=api.max_concurrency,
        max_retries=api.max_retries,
        timeout_s=api.timeout_s,
        requests_per_minute=api.requests_per_minute,
        tokens_per_minute=api.tokens_per_minute,
    )


def provider_models(store: RunStore, model: BaseModelSpec) -> dict[str, str]:
    """Adapter key → the model id to call: what each finished API fine-tune produced."""
    rows = store.finetunes.latest(["key", "status", "provider_model"]).to_pylist()
    return {
        r["key"]: r["provider_model"] for r in rows if r["status"] == "ok" and r["provider_model"]
    }


def generate_api(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    units: list[GenerationUnit],
    buffer: ShardBuffer,
    stage: str,
) -> int:
    """Answer `units` (all of one API model); return the rows stored."""
    import ray

    from ftsafe_ray.judge.cluster import ClusterRateBudget, get_rate_budget, release_rate_budget

    model = plan.model_spec(units[0].target.model)
    access = api_access(model)
    spec = client_spec(model)
    budget = get_rate_budget(spec, access.base_url) if ray.is_initialized() else None
    limiter = None if budget is None else ClusterRateBudget(budget, spec, access.base_url)
    try:
        return asyncio.run(
            _answer_all(plan, store, progress, units, buffer, stage, access, spec, limiter)
        )
    finally:
        if budget is not None:
            release_rate_budget(budget)


async def _answer_all(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    units: list[GenerationUnit],
    buffer: ShardBuffer,
    stage: str,
    access: ApiAccess,
    spec: RubricJudgeSpec,
    limiter: Any,
) -> int:
    from ftsafe_ray.generate.stage import _row, _sampling_seed
    from ftsafe_ray.judge.rubric_client import RubricJudgeClient

    model = plan.model_spec(units[0].target.model)
    ids = provider_models(store, model)
    price = plan.spec.judges.prices.get(model.path)
    sampling = plan.spec.sampling
    max_tokens = sampling.max_new_tokens
    budget = model.endpoint().budget_usd
    left = None if budget is None else budget - spent_usd(store, model.name)
    stored = skipped = 0

    async def answer(client: RubricJudgeClient, unit: GenerationUnit) -> None:
        nonlocal stored, left, skipped
        messages = [dict(m) for m in unit.messages]
        worst = generation_cost(price, estimate_request_tokens(messages, 0), max_tokens) or 0.0
        if left is not None:
            if worst > left:
                skipped += 1
                return
            left -= worst  # reserved now, settled once the answer's cost is known
        params: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.temperature > 0:
            params["seed"] = _sampling_seed(unit, plan)
        target = unit.target
        model_id = model.path if target.is_base else ids.get(target.adapter_key)
        completion: Any = None
        failure: str | None = "no provider model id recorded for its fine-tune"
        if model_id is not None:
            completion, failure, _ = await client.complete(
                messages, max_tokens, model=model_id, params=params
            )
        if completion is None:
            row = _row(unit, None, plan, error=failure or "no completion")
            cost = None
        else:
            usage = completion.usage
            choice = completion.choices[0] if completion.choices else None
            message = choice.message if choice else None
            text = (message.content or getattr(message, "refusal", None) or "") if message else ""
            result = _Answer(
                text=text,
                num_prompt_tokens=usage.prompt_tokens if usage else None,
                num_output_tokens=usage.completion_tokens if usage else None,
                finish_reason=choice.finish_reason if choice else None,
            )
            cost = generation_cost(price, result.num_prompt_tokens, result.num_output_tokens)
            row = _row(unit, result, plan)
        if left is not None:
            left += worst - (cost or 0.0)
        buffer.add([{**row, "backend": BACKEND, "cost_usd": cost}])
        stored += 1
        progress.advance(stage)

    async with RubricJudgeClient(spec, access.api_key, access.base_url, limiter=limiter) as client:
        await asyncio.gather(*(answer(client, unit) for unit in units))
    if skipped:
        progress.log(
            f"generate: {skipped} prompts of {model.name} not sent: they would pass "
            f"models ({model.name}).api.budget_usd ${budget:.2f}"
        )
    return stored


class _Answer:
    """What `generate.stage._row` reads of a result."""

    def __init__(
        self,
        text: str,
        num_prompt_tokens: int | None,
        num_output_tokens: int | None,
        finish_reason: str | None,
    ) -> None:
        self.text, self.finish_reason = text, finish_reason
        self.num_prompt_tokens, self.num_output_tokens = num_prompt_tokens, num_output_tokens
        self.node = None
