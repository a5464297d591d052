"""The rubric judge's spend ledger: what a request can cost at most, and what still fits
`judges.rubric.budget_usd` (requests are sent only while their worst case fits)."""

from __future__ import annotations

from collections.abc import Sequence

from ftsafe_ray.judge.rubric_client import JudgeRequest
from ftsafe_ray.judge.rubrics import Rubric
from ftsafe_ray.spec import JudgePrice, RubricJudgeSpec


class SpendLedger:
    """Dollars left of the budget (None: no budget), charged as verdicts are stored."""

    def __init__(
        self,
        spec: RubricJudgeSpec,
        rubric: Rubric,
        price: JudgePrice | None,
        spent_usd: float,
        batch: bool,
    ) -> None:
        self.spec, self.rubric, self.price, self.batch = spec, rubric, price, batch
        budget = spec.budget_usd
        self.remaining_usd: float | None = None if budget is None else budget - spent_usd

    def charge(self, cost_usd: float | None) -> None:
        if self.remaining_usd is not None:
            self.remaining_usd -= cost_usd or 0.0

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

    def affordable(self, requests: Sequence[JudgeRequest], reserved: float) -> list[JudgeRequest]:
        """The longest prefix of `requests` whose worst-case cost fits what is left, beside
        `reserved` (the worst case of requests already sent)."""
        if self.remaining_usd is None:
            return list(requests)
        out = []
        for request in requests:
            cost = self.max_cost(request)
            if reserved + cost > self.remaining_usd:
                break
            reserved += cost
            out.append(request)
        return out
