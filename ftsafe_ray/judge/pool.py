"""The judge pool: Ray async actors rating batches of pairs, paced by one shared budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult, RubricJudgeClient
    from ftsafe_ray.spec import RubricJudgeSpec

# Batches the actor runs at once; HTTP concurrency is bounded separately by spec.max_concurrency.
ACTOR_MAX_CONCURRENCY = 128


class RubricJudgeActor:
    """Holds one judge client (and so one limiter) and rates the batches sent to it."""

    def __init__(
        self,
        spec: RubricJudgeSpec,
        api_key: str,
        base_url: str | None,
        rate_share: float = 1.0,
        budget: Any = None,
    ) -> None:
        self._args = (spec, api_key, base_url, rate_share, budget)
        self._client: RubricJudgeClient | None = None

    def _judge_client(self) -> RubricJudgeClient:
        # Built on first use so its asyncio objects belong to the actor's event loop.
        if self._client is None:
            from ftsafe_ray.judge.cluster import ClusterRateBudget
            from ftsafe_ray.judge.rubric_client import RubricJudgeClient

            spec, api_key, base_url, rate_share, budget = self._args
            # rate_share is what the actor paces at alone, should the shared budget be lost.
            limiter = None
            if budget is not None:
                limiter = ClusterRateBudget(budget, spec, base_url, rate_share)
            self._client = RubricJudgeClient(
                spec, api_key, base_url, rate_share=rate_share, limiter=limiter
            )
        return self._client

    async def judge_batch(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        """Rate a batch; one result per request, in the same order."""
        return await self._judge_client().judge_many(requests)

    async def warm(self) -> None:
        """Build the client now (its imports take seconds), before the first batch needs it."""
        self._judge_client()

    async def check(self) -> None:
        """Raise JudgeError if the endpoint, key or model is unusable."""
        await self._judge_client().check()


def make_rubric_judge_actor(
    spec: RubricJudgeSpec,
    api_key: str,
    base_url: str | None,
    rate_share: float = 1.0,
    budget: Any = None,
    **ray_options: Any,
) -> Any:
    """Start a RubricJudgeActor pacing through `budget` (a JudgeRateBudget actor, shared by
    every judge actor of the cluster) or, without one (or once it is lost for good), its own
    `rate_share` of the limits.

    Defaults: `max_concurrency=ACTOR_MAX_CONCURRENCY` and `num_cpus=0` (the actor only waits
    on the network); any Ray actor option passed here overrides them.
    """
    import ray

    options = {"max_concurrency": ACTOR_MAX_CONCURRENCY, "num_cpus": 0, **ray_options}
    actor_class = ray.remote(RubricJudgeActor)
    return actor_class.options(**options).remote(spec, api_key, base_url, rate_share, budget)
