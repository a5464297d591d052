"""What the API models of a plan will still cost: fine-tuning jobs (tokens x epochs) and
answers (prompt and max tokens), for `ftsafe plan`, against each model's api.budget_usd."""

from __future__ import annotations

from dataclasses import dataclass

from ftsafe_ray.api_access import generation_cost, training_cost, training_tokens
from ftsafe_ray.judge.limiter import estimate_request_tokens
from ftsafe_ray.plan import Plan
from ftsafe_ray.store import RunStore


@dataclass(frozen=True)
class ApiCostEstimate:
    """One API model's work still to do, and its price where judges.prices lists one."""

    model: str
    jobs: int
    trained_tokens: int
    training_usd: float | None
    answers: int
    prompt_tokens: int
    max_output_tokens: int
    generation_usd: float | None  # at most: every answer max_new_tokens long
    spent_usd: float
    budget_usd: float | None


def estimate_api_costs(plan: Plan, store: RunStore) -> list[ApiCostEstimate]:
    """An estimate per API model of the plan (none for a plan without one)."""
    from ftsafe_ray.finetune.api_stage import spent_usd
    from ftsafe_ray.finetune.stage import pending_finetunes

    models = [m for m in plan.spec.models if m.provider == "openai"]
    if not models:
        return []
    pending, _ = pending_finetunes(plan, store)
    answered = store.generations.done_keys(None)
    epochs = {arm.name: arm.train.epochs for arm in plan.spec.finetunes}
    max_tokens = plan.spec.sampling.max_new_tokens
    estimates = []
    for model in models:
        price = plan.spec.judges.prices.get(model.path)
        tokens = sum(
            training_tokens(u.examples, epochs[u.arm]) for u in pending if u.model == model.name
        )
        units = [
            u
            for u in plan.unique_generations
            if u.target.model == model.name and u.key not in answered
        ]
        prompt = sum(estimate_request_tokens([dict(m) for m in u.messages], 0) for u in units)
        estimates.append(
            ApiCostEstimate(
                model=model.name,
                jobs=sum(u.model == model.name for u in pending),
                trained_tokens=tokens,
                training_usd=training_cost(price, tokens),
                answers=len(units),
                prompt_tokens=prompt,
                max_output_tokens=len(units) * max_tokens,
                generation_usd=generation_cost(price, prompt, len(units) * max_tokens),
                spent_usd=spent_usd(store, model.name),
                budget_usd=model.endpoint().budget_usd,
            )
        )
    return estimates


def describe_api_cost(estimate: ApiCostEstimate, path: str) -> str:
    """One line for `ftsafe plan`."""
    head = (
        f"API model {estimate.model} ({path}): {estimate.jobs} fine-tuning job(s), "
        f"~{estimate.trained_tokens:,} trained tokens; {estimate.answers} answer(s), "
        f"~{estimate.prompt_tokens:,} prompt + at most {estimate.max_output_tokens:,} output tokens"
    )
    if estimate.training_usd is None and estimate.generation_usd is None:
        return f"{head}; add judges.prices.{path} to see dollars"
    training = "?" if estimate.training_usd is None else f"${estimate.training_usd:,.2f}"
    generation = "?" if estimate.generation_usd is None else f"${estimate.generation_usd:,.2f}"
    money = f"≈ {training} training + at most {generation} generation"
    spent = f"spent so far ${estimate.spent_usd:,.2f}"
    if estimate.budget_usd is not None:
        spent += f" of budget_usd ${estimate.budget_usd:,.2f}"
    return f"{head} {money}; {spent}"


def describe_api_spend(store: RunStore) -> list[str]:
    """For `ftsafe status`: what API fine-tuning and API answers stored in a run cost."""
    spent = {
        name: sum(c or 0.0 for c in table.latest(["cost_usd"]).column("cost_usd").to_pylist())
        for name, table in (("fine-tuning", store.finetunes), ("answers", store.generations))
    }
    if not any(spent.values()):
        return []
    parts = ", ".join(f"{name} ${dollars:,.2f}" for name, dollars in spent.items())
    return [f"API spend: {parts}"]
