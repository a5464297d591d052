"""One rate budget per judge endpoint and model for the whole Ray cluster.

A named async actor holds the token buckets; every judge actor, on any node, awaits
`acquire` on it before each request. Why one remote call per request and not leases of
several requests: a call costs ~1 ms against judge latencies of 0.3-2 s and ~1,000 calls/s
of headroom, while a lease held by a slow or dead actor would idle part of the budget or
let the pool burst past the limit when it is returned late. Why hand-written and not
aiolimiter: the budget must take two costs at once (requests and tokens), pause on a 429,
lower itself to limits read from headers, and run on an injected clock in tests.

Pacing: the budget admits at PACE_FRACTION of each limit (applied here, once, by `paced`),
spread evenly with a burst of BURST_S at most; limits learned from headers are raw provider
limits, paced by the same `paced` inside RateLimiter.lower_limits, never twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ftsafe_ray.judge.limiter import BURST_S, RateLimiter, paced

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

logger = logging.getLogger(__name__)

NAMESPACE = "ftsafe_judge"
# Waiters queue inside the actor; this bounds how many acquire calls it holds at once.
BUDGET_MAX_CONCURRENCY = 100_000
GET_ATTEMPTS = 5
# A budget outlives the stage that made it while campaigns share it; it exits this long after
# its last user detaches, so limits never go stale on a long-lived cluster.
IDLE_EXIT_S = 30.0
# A killed driver never detaches, so a budget whose holders vanished also exits: after this
# long with no request through it. That is longer than a live user waits between two acquires
# (a request's timeout and retries, a Retry-After of at most 300 s), and should a live user
# outlast it anyway, its next acquire makes the budget again (see ClusterRateBudget).
ORPHAN_EXIT_S = 900.0
# Times one judge actor makes a dead budget again before it paces on its own.
MAX_REMAKES = 3
# How often an idle budget asks the GCS whether the Ray jobs of its holders have all ended
# (`ray job stop`, a killed driver): then no user is left and it exits at once.
JOBS_CHECK_S = 2.0


class JudgeRateBudget:
    """The Ray actor behind a cluster-wide budget: a RateLimiter that many processes share."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        idle_exit_s: float = IDLE_EXIT_S,
        burst_s: float = BURST_S,
        orphan_exit_s: float = ORPHAN_EXIT_S,
    ) -> None:
        self._limits = (requests_per_minute, tokens_per_minute)
        self._burst_s = burst_s
        self._limiter: RateLimiter | None = None
        self._holders = 0
        self._jobs: set[str] = set()  # the Ray jobs its holders belong to
        self._idle_exit_s = idle_exit_s
        self._orphan_exit_s = orphan_exit_s
        self._in_flight = 0
        self._last_use = time.monotonic()
        self._watching = False
        self.acquired = 0

    def _used(self) -> None:
        """Note a use; the first one starts the watch that lets an unused budget exit."""
        self._last_use = time.monotonic()
        if not self._watching:
            import ray

            self._watching = True
            # A method call on itself, not a bare task: exit_actor works only inside one.
            ray.get_runtime_context().current_actor.watch.remote()

    async def watch(self) -> None:
        """Runs for the actor's life; exits it once unused for `idle_exit_s` after the last
        holder detached, or for `orphan_exit_s` while holders remain (their driver died), or
        as soon as every holder's Ray job has ended."""
        import ray

        check_s = min(5.0, max(0.02, min(self._idle_exit_s, self._orphan_exit_s) / 4))
        jobs_checked = time.monotonic()
        while True:
            await asyncio.sleep(check_s)
            limit = self._idle_exit_s if self._holders <= 0 else self._orphan_exit_s
            if self._in_flight == 0 and time.monotonic() - self._last_use >= limit:
                ray.actor.exit_actor()
            if self._in_flight == 0 and time.monotonic() - jobs_checked >= JOBS_CHECK_S:
                jobs_checked = time.monotonic()
                if await _all_ended(self._jobs):
                    ray.actor.exit_actor()

    async def attach(self, job_id: str | None = None) -> None:
        """A judge stage of Ray job `job_id` starts using this budget."""
        self._holders += 1
        if job_id is not None:
            self._jobs.add(job_id)
        self._used()

    async def detach(self) -> None:
        """A judge stage is done; once none is left, the budget exits after `idle_exit_s`."""
        self._holders -= 1
        self._last_use = time.monotonic()

    def _rate_limiter(self) -> RateLimiter:
        # Built on first use so its asyncio lock belongs to the actor's event loop.
        if self._limiter is None:
            rpm, tpm = self._limits
            self._limiter = RateLimiter(paced(rpm), paced(tpm), burst_s=self._burst_s)
        return self._limiter

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` fits the cluster's budget, then spend it."""
        self._in_flight += 1
        self._used()
        try:
            await self._rate_limiter().acquire(tokens)
        finally:
            self._in_flight -= 1
            self._last_use = time.monotonic()
        self.acquired += 1

    async def slow_down(self, delay_s: float) -> None:
        """Admit nothing anywhere in the cluster for `delay_s` seconds."""
        self._rate_limiter().slow_down(delay_s)

    async def configure(
        self, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> None:
        """Pace at a campaign's configured limits from now on, up or down.

        Every driver calls this when it joins, so the latest configuration wins: a raised
        limit takes effect at once instead of being held down by an older campaign's limits
        or by limits lowered from headers (clients of the new campaign report those again
        with their first reply, see RubricJudgeClient._adapt).
        """
        self._limits = (requests_per_minute, tokens_per_minute)
        if self._limiter is not None:
            self._limiter.set_rates(paced(requests_per_minute), paced(tokens_per_minute))

    async def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
        """Lower the paced rates to limits a provider reported in its headers."""
        self._rate_limiter().lower_limits(requests_per_minute, tokens_per_minute)

    async def stats(self) -> dict[str, Any]:
        """Requests admitted so far and the paced rates in force (not counted as a use)."""
        rpm, tpm = self._rate_limiter().rates_per_minute
        return {
            "acquired": self.acquired,
            "requests_per_minute": rpm,
            "tokens_per_minute": tpm,
            "holders": self._holders,
        }


async def _all_ended(job_ids: set[str]) -> bool:
    """Whether every one of these Ray jobs (hex ids) has ended; False when unknown."""
    import ray

    if not job_ids:
        return False
    worker: Any = ray._private.worker.global_worker
    try:
        jobs = await worker.gcs_client.async_get_all_job_info(
            skip_submission_job_info_field=True, skip_is_running_tasks_field=True, timeout=10
        )
    except Exception:  # the GCS unreachable for a moment: the orphan exit still applies
        logger.debug("cannot read the job table", exc_info=True)
        return False
    ended = {job_id.hex() for job_id, info in jobs.items() if info.is_dead}
    return job_ids <= ended


def _actor_errors() -> tuple[type[Exception], ...]:
    """What a call to a budget that is gone raises (dead, being restarted, unschedulable)."""
    import ray

    errors = ray.exceptions
    return (errors.RayActorError, getattr(errors, "ActorUnschedulableError", errors.RayActorError))


class ClusterRateBudget:
    """A RateBudget (see limiter.py) that forwards to the shared JudgeRateBudget actor.

    The budget is best effort, never a reason for a row to fail: if its actor dies (killed,
    its node lost, an idle exit racing a slow user), the next acquire makes it again by name
    (every judge actor that notices joins the same new one) and reports again the provider
    limits it had passed on. Without `spec`, or after MAX_REMAKES, this process paces on its
    own `rate_share` of the configured limits instead, with a warning.
    """

    def __init__(
        self,
        actor: Any,
        spec: RubricJudgeSpec | None = None,
        base_url: str | None = None,
        rate_share: float = 1.0,
    ) -> None:
        self.actor = actor
        self._spec = spec
        self._base_url = base_url
        self._share = rate_share
        self._local: RateLimiter | None = None
        self._lowered: tuple[float | None, float | None] | None = None
        self._remakes = 0
        self._lock: asyncio.Lock | None = None

    async def acquire(self, tokens: int) -> None:
        while self._local is None:
            actor = self.actor
            try:
                await actor.acquire.remote(tokens)
                return
            except _actor_errors() as error:
                await self._replace(actor, error)
        await self._local.acquire(tokens)

    async def _replace(self, dead: Any, error: Exception) -> None:
        """Make the budget again, or fall back to a local limiter; once per dead actor."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.actor is not dead or self._local is not None:
                return  # another waiter already replaced it
            what = f"{type(error).__name__}"
            if self._spec is not None and self._remakes < MAX_REMAKES:
                self._remakes += 1
                try:
                    self.actor = await remake_rate_budget(self._spec, self._base_url)
                except Exception as remake_error:  # fall through to the local limiter
                    what = f"{what}, then making it again: {type(remake_error).__name__}"
                else:
                    if self._lowered is not None:
                        self.actor.lower_limits.remote(*self._lowered)
                    logger.warning("judge rate budget was lost (%s); made it again", what)
                    return
            spec = self._spec
            rpm = spec.requests_per_minute if spec is not None else None
            tpm = spec.tokens_per_minute if spec is not None else None
            self._local = RateLimiter(paced(rpm, self._share), paced(tpm, self._share))
            if self._lowered is not None:
                self._local.lower_limits(*self._scaled(self._lowered))
            logger.warning(
                "judge rate budget was lost (%s); this judge actor now paces alone at %.0f%% "
                "of the configured limits",
                what,
                100 * self._share,
            )

    def _scaled(self, limits: tuple[float | None, float | None]) -> tuple[float | None, ...]:
        return tuple(None if limit is None else limit * self._share for limit in limits)

    def slow_down(self, delay_s: float) -> None:
        if self._local is not None:
            self._local.slow_down(delay_s)
            return
        self.actor.slow_down.remote(delay_s)  # fire and forget: the pause is best effort

    def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
        self._lowered = (requests_per_minute, tokens_per_minute)
        if self._local is not None:
            self._local.lower_limits(*self._scaled(self._lowered))
            return
        self.actor.lower_limits.remote(requests_per_minute, tokens_per_minute)


def budget_name(spec: RubricJudgeSpec, base_url: str | None) -> str:
    """One name per endpoint, model and key variable (or key file): what a provider's quota is
    tied to."""
    key = f"file:{spec.api_key_file}" if spec.api_key_file else spec.api_key_env
    ident = f"{base_url or 'https://api.openai.com/v1'}|{spec.model}|{key}"
    return "judge-budget-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def _budget_handle(
    spec: RubricJudgeSpec,
    base_url: str | None,
    burst_s: float = BURST_S,
    idle_exit_s: float = IDLE_EXIT_S,
    orphan_exit_s: float = ORPHAN_EXIT_S,
) -> Any:
    """The named budget actor, created with the spec's limits unless it exists already."""
    import ray

    options = {
        "name": budget_name(spec, base_url),
        "namespace": NAMESPACE,
        "get_if_exists": True,
        # Detached, so campaigns share it and a lost one is made again under the same name (a
        # non-detached actor's name stays taken while its owner holds a handle). It exits when
        # every job using it has ended (JudgeRateBudget.watch): `ray job stop` leaves none.
        "lifetime": "detached",
        "max_concurrency": BUDGET_MAX_CONCURRENCY,
        "num_cpus": 0,
    }
    limits = (spec.requests_per_minute, spec.tokens_per_minute)
    return (
        ray.remote(JudgeRateBudget)
        .options(**options)
        .remote(*limits, idle_exit_s, burst_s, orphan_exit_s)
    )


def get_rate_budget(
    spec: RubricJudgeSpec,
    base_url: str | None,
    burst_s: float = BURST_S,
    idle_exit_s: float = IDLE_EXIT_S,
    orphan_exit_s: float = ORPHAN_EXIT_S,
) -> Any:
    """The cluster's budget actor for this judge, created on first use.

    A second campaign on the same cluster and endpoint joins the same budget, which then
    paces at that campaign's configured limits (see JudgeRateBudget.configure). `burst_s` is
    how many seconds of the rate may go out at once. Call release_rate_budget when done; the
    actor exits `idle_exit_s` after its last user releases it, or `orphan_exit_s` after its
    last use if a user never does (its driver was killed).

    Detached, not owned by this driver: a budget owned by one campaign's driver would die
    with it under a second campaign still using it. It exits once the Ray jobs of all its
    holders have ended, so a stopped or killed job leaves it behind for seconds only.
    """
    import ray

    for attempt in range(GET_ATTEMPTS):
        actor = _budget_handle(spec, base_url, burst_s, idle_exit_s, orphan_exit_s)
        try:
            ray.get(actor.attach.remote(ray.get_runtime_context().get_job_id()))
        except _actor_errors():
            # It exited (idle) just as we found it; its name frees shortly, so try again.
            if attempt == GET_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
            continue
        ray.get(actor.configure.remote(spec.requests_per_minute, spec.tokens_per_minute))
        return actor
    raise AssertionError("unreachable")


async def remake_rate_budget(spec: RubricJudgeSpec, base_url: str | None) -> Any:
    """From inside a judge actor: the budget again after its actor died (made if need be).

    The judge actor attaches as a holder, so the budget does not exit `idle_exit_s` after a
    lull in a slow run; having no way to detach when killed, it leaves the budget to exit
    `orphan_exit_s` after its last use. A later campaign's limits replace its own anyway.
    """
    import ray

    for attempt in range(GET_ATTEMPTS):
        actor = _budget_handle(spec, base_url)
        try:
            await actor.attach.remote(ray.get_runtime_context().get_job_id())
            return actor
        except _actor_errors():
            # The dead actor's name may not be free yet; get_if_exists found it again.
            if attempt == GET_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def release_rate_budget(actor: Any) -> None:
    """Tell the budget this stage is done with it (see JudgeRateBudget.detach)."""
    actor.detach.remote()
