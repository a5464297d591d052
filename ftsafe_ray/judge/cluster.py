"""One rate budget per judge endpoint and model for the whole Ray cluster.

A named async actor holds the token buckets; every judge actor, on any node, awaits
`acquire` on it before each request. Why one remote call per request and not leases of
several requests: a call costs ~1 ms against judge latencies of 0.3-2 s and ~1,000 calls/s
of headroom, while a lease held by a slow or dead actor would idle part of the budget or
let the pool burst past the limit when it is returned late. Why hand-written and not
aiolimiter: the budget must take two costs at once (requests and tokens), pause on a 429,
lower itself to limits read from headers, and run on an injected clock in tests.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from ftsafe_ray.judge.limiter import RateLimiter, paced

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

NAMESPACE = "ftsafe_judge"
# Waiters queue inside the actor; this bounds how many acquire calls it holds at once.
BUDGET_MAX_CONCURRENCY = 100_000
GET_ATTEMPTS = 5
# A detached budget outlives any one driver (campaigns share it); it exits this long after
# its last user detaches, so limits never go stale on a long-lived cluster.
IDLE_EXIT_S = 30.0


class JudgeRateBudget:
    """The Ray actor behind a cluster-wide budget: a RateLimiter that many processes share."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        idle_exit_s: float = IDLE_EXIT_S,
        burst_s: float = 1.0,
    ) -> None:
        self._limits = (requests_per_minute, tokens_per_minute)
        self._burst_s = burst_s
        self._limiter: RateLimiter | None = None
        self._holders = 0
        self._idle_exit_s = idle_exit_s
        self.acquired = 0

    async def attach(self) -> None:
        """A judge stage starts using this budget."""
        self._holders += 1

    async def detach(self) -> None:
        """A judge stage is done; the last one out lets the actor exit after a grace period."""
        import asyncio

        self._holders -= 1
        if self._holders > 0:
            return
        await asyncio.sleep(self._idle_exit_s)
        if self._holders <= 0:
            import ray

            ray.actor.exit_actor()

    def _rate_limiter(self) -> RateLimiter:
        # Built on first use so its asyncio lock belongs to the actor's event loop.
        if self._limiter is None:
            rpm, tpm = self._limits
            self._limiter = RateLimiter(paced(rpm), paced(tpm), burst_s=self._burst_s)
        return self._limiter

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` fits the cluster's budget, then spend it."""
        await self._rate_limiter().acquire(tokens)
        self.acquired += 1

    async def slow_down(self, delay_s: float) -> None:
        """Admit nothing anywhere in the cluster for `delay_s` seconds."""
        self._rate_limiter().slow_down(delay_s)

    async def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
        """Lower the paced rates to limits a provider reported (or another campaign set)."""
        self._rate_limiter().lower_limits(requests_per_minute, tokens_per_minute)

    async def stats(self) -> dict[str, Any]:
        """Requests admitted so far and the paced rates in force."""
        rpm, tpm = self._rate_limiter().rates_per_minute
        return {"acquired": self.acquired, "requests_per_minute": rpm, "tokens_per_minute": tpm}


class ClusterRateBudget:
    """A RateBudget (see limiter.py) that forwards to the shared JudgeRateBudget actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def acquire(self, tokens: int) -> None:
        await self.actor.acquire.remote(tokens)

    def slow_down(self, delay_s: float) -> None:
        self.actor.slow_down.remote(delay_s)  # fire and forget: the pause is best effort

    def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
        self.actor.lower_limits.remote(requests_per_minute, tokens_per_minute)


def budget_name(spec: RubricJudgeSpec, base_url: str | None) -> str:
    """One name per endpoint, model and key variable: what a provider's quota is tied to."""
    ident = f"{base_url or 'https://api.openai.com/v1'}|{spec.model}|{spec.api_key_env}"
    return "judge-budget-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def get_rate_budget(
    spec: RubricJudgeSpec,
    base_url: str | None,
    burst_s: float = 1.0,
    idle_exit_s: float = IDLE_EXIT_S,
) -> Any:
    """The cluster's budget actor for this judge, created on first use.

    A second campaign on the same cluster and endpoint joins the same budget; if it asks for
    lower limits, the budget lowers to them (it never rises while shared). `burst_s` is how
    many seconds of the rate may go out at once. Call release_rate_budget when done; the
    actor exits `idle_exit_s` after its last user releases it.
    """
    import ray

    options = {
        "name": budget_name(spec, base_url),
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "lifetime": "detached",
        "max_concurrency": BUDGET_MAX_CONCURRENCY,
        "num_cpus": 0,
    }
    for attempt in range(GET_ATTEMPTS):
        actor = (
            ray.remote(JudgeRateBudget)
            .options(**options)
            .remote(spec.requests_per_minute, spec.tokens_per_minute, idle_exit_s, burst_s)
        )
        try:
            ray.get(actor.attach.remote())
        except ray.exceptions.RayActorError:
            # It exited (idle) just as we found it; its name frees shortly, so try again.
            if attempt == GET_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
            continue
        ray.get(actor.lower_limits.remote(spec.requests_per_minute, spec.tokens_per_minute))
        return actor
    raise AssertionError("unreachable")


def release_rate_budget(actor: Any) -> None:
    """Tell the budget this stage is done with it (see JudgeRateBudget.detach)."""
    actor.detach.remote()
