"""Judge spend: dollars from token counts and the spec's price table; estimates for `plan`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftsafe_ray.judge.limiter import CHARS_PER_TOKEN, estimate_request_tokens

if TYPE_CHECKING:
    from ftsafe_ray.spec import JudgePrice, JudgesSpec

# A rubric reply is a few sentences and a score: what `plan` expects per verdict. The budget
# reserves the full max_tokens instead, so it never overshoots.
EXPECTED_REPLY_TOKENS = 150


def cost_usd(
    price: JudgePrice | None, prompt_tokens: int | None, completion_tokens: int | None, batch: bool
) -> float | None:
    """Dollars for one call, or None when the model has no price."""
    if price is None:
        return None
    dollars = (
        (prompt_tokens or 0) * price.input_per_million
        + (completion_tokens or 0) * price.output_per_million
    ) / 1e6
    return dollars * (price.batch_discount if batch else 1.0)


def price_of(judges: JudgesSpec) -> JudgePrice | None:
    """The price of the rubric judge's model, if the spec lists one."""
    return judges.prices.get(judges.rubric.model)


def request_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens of one request, estimated as the limiter does."""
    return estimate_request_tokens(messages, 0)


def spent_usd(rows: Iterable[Mapping[str, Any]], model: str) -> float:
    """What the rubric rows of this judge model in a run directory cost."""
    return sum(
        row.get("cost_usd") or 0.0
        for row in rows
        if row.get("judge") == "rubric" and row.get("judge_model") == model
    )


@dataclass(frozen=True)
class JudgeCostEstimate:
    """What judging the not-yet-judged answers of a plan will take."""

    verdicts: int
    prompt_tokens: int
    expected_output_tokens: int
    max_output_tokens: int
    expected_usd: float | None
    max_usd: float | None
    spent_usd: float


def estimate_cost(
    judges: JudgesSpec,
    pairs: Iterable[tuple[str, str]],
    spent: float,
) -> JudgeCostEstimate:
    """Tokens and dollars for rating these (instruction, answer) pairs with the rubric judge."""
    from ftsafe_ray.judge.rubrics import get_rubric

    spec = judges.rubric
    rubric = get_rubric(spec.rubric)
    count = prompt = 0
    for instruction, answer in pairs:
        try:
            messages = rubric.build_messages(instruction, answer)
        except Exception:  # a custom rubric's bug: that row will be an unpaid error
            continue
        count += 1
        prompt += request_tokens(messages)
    expected = count * min(EXPECTED_REPLY_TOKENS, spec.max_tokens)
    most = count * spec.max_tokens
    price = price_of(judges)
    batch = spec.mode == "batch"
    return JudgeCostEstimate(
        verdicts=count,
        prompt_tokens=prompt,
        expected_output_tokens=expected,
        max_output_tokens=most,
        expected_usd=cost_usd(price, prompt, expected, batch),
        max_usd=cost_usd(price, prompt, most, batch),
        spent_usd=spent,
    )


def placeholder_answer(max_new_tokens: int) -> str:
    """Stands in for an answer not generated yet: as long as generation allows."""
    return "x" * (max_new_tokens * CHARS_PER_TOKEN)


def describe_estimate(judges: JudgesSpec, estimate: JudgeCostEstimate) -> str:
    """One line for `ftsafe plan`: verdicts to do, tokens, dollars, spend against the budget."""
    spec = judges.rubric
    head = (
        f"rubric judge ({spec.rubric}, {spec.model}, {spec.mode}): {estimate.verdicts} "
        f"verdict(s) to do, ~{estimate.prompt_tokens:,} prompt + ~"
        f"{estimate.expected_output_tokens:,} output tokens "
        f"(at most {estimate.max_output_tokens:,})"
    )
    if estimate.expected_usd is None:
        return f"{head}; add judges.prices.{spec.model} to see dollars"
    money = f"≈ ${estimate.expected_usd:,.2f} (at most ${estimate.max_usd:,.2f})"
    spent = f"spent so far ${estimate.spent_usd:,.2f}"
    if spec.budget_usd is not None:
        spent += f" of budget_usd ${spec.budget_usd:,.2f}"
    return f"{head} {money}; {spent}"


def describe_judgments(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """For `ftsafe status`: verdict statuses per judge and what the rubric judge cost."""
    counts: dict[str, dict[str, int]] = {}
    spent = 0.0
    for row in rows:
        judge = counts.setdefault(row.get("judge") or "?", {})
        judge[row.get("status") or "?"] = judge.get(row.get("status") or "?", 0) + 1
        spent += row.get("cost_usd") or 0.0
    lines = []
    for name, statuses in sorted(counts.items()):
        parts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        lines.append(f"{name} verdicts: {parts}")
    if spent:
        lines.append(f"judge spend: ${spent:,.2f}")
    return lines
