"""The rubric judge online: batches of requests kept in flight on a pool of judge actors that
share one cluster-wide rate budget, each result handed back to be stored as it lands."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.ledger import SpendLedger
from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult
from ftsafe_ray.spec import RubricJudgeSpec

# Requests per actor call: large enough to amortise Ray's per-call cost (~1 ms), small enough
# that a slow retry holds back few finished rows.
RUBRIC_BATCH = 16

Store = Callable[[list[JudgeResult]], None]


class JudgePool:
    """The judge actors of one pass and the cluster-wide rate budget they pace through.

    Actor processes take seconds to start (a Python process, the HTTP client's imports), so the
    pipeline starts the pool while generation runs (`warm`): by the time the answers are stored,
    its first requests go out at once. Close it when done (a context manager).
    """

    def __init__(self, spec: RubricJudgeSpec, access: Any) -> None:
        from ftsafe_ray.judge.cluster import get_rate_budget
        from ftsafe_ray.judge.pool import make_rubric_judge_actor

        self.spec, self.access = spec, access
        self.budget = get_rate_budget(spec, access.base_url)
        # The share is what each actor paces at alone, should the shared budget be lost.
        share = 1.0 / spec.num_actors
        self.actors = [
            make_rubric_judge_actor(spec, access.api_key, access.base_url, share, self.budget)
            for _ in range(spec.num_actors)
        ]
        self._share = share
        self._warming = [actor.warm.remote() for actor in self.actors]

    def live_actors(self, timeout_s: float = 10.0) -> list[Any]:
        """The actors, any that died since the pool started (its node lost while generation
        ran, say) replaced by a new one. A warm actor answers a second `warm` at once; one
        still starting is kept and waited for by the first batches sent to it."""
        import ray

        from ftsafe_ray.judge.pool import make_rubric_judge_actor

        self._warming = [actor.warm.remote() for actor in self.actors]
        done, _ = ray.wait(self._warming, num_returns=len(self._warming), timeout=timeout_s)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError:
                continue  # building the client failed: the endpoint check says why, in one line
            except ray.exceptions.RayActorError:
                i = self._warming.index(ref)
                self.actors[i] = make_rubric_judge_actor(
                    self.spec, self.access.api_key, self.access.base_url, self._share, self.budget
                )
                self._warming[i] = self.actors[i].warm.remote()
        return list(self.actors)

    def ready(self, timeout_s: float | None = None) -> bool:
        """Wait until every actor has started and built its client; whether they all did."""
        import ray

        done, _ = ray.wait(self._warming, num_returns=len(self._warming), timeout=timeout_s)
        return len(done) == len(self._warming)

    def close(self) -> None:
        import ray

        from ftsafe_ray.judge.cluster import release_rate_budget

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        release_rate_budget(self.budget)

    def __enter__(self) -> JudgePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def judge_online(
    spec: RubricJudgeSpec,
    access: Any,
    requests: list[JudgeRequest],
    ledger: SpendLedger,
    store: Store,
    pool: JudgePool | None = None,
) -> int:
    """Judge `requests` through `spec.num_actors` judge actors (those of `pool`, started ahead,
    or a pool of this call's own); return how many were stored."""
    if not ledger.affordable(requests[:1], 0.0):
        return 0  # nothing left to do, or not one more call fits the budget
    with contextlib.ExitStack() as own:
        if pool is None:
            actors = own.enter_context(JudgePool(spec, access)).actors
        else:
            actors = pool.live_actors()  # started ahead: any lost meanwhile replaced
        # The endpoint check goes out first, but the first batches go right behind it
        # instead of a round trip later (see dispatch).
        return dispatch(actors, requests, spec, ledger, store, actors[0].check.remote())


def dispatch(
    actors: list[Any],
    requests: list[JudgeRequest],
    spec: RubricJudgeSpec,
    ledger: SpendLedger,
    store: Store,
    check: Any = None,
) -> int:
    """Keep every actor fed with a few batches; stop sending when the budget is spent.

    Until the endpoint `check` passes, each actor gets one batch and nothing is stored; should
    it fail, only the verdicts already paid for are kept (see _confirm). A batch whose actor
    died is stored as error results (its requests may have been paid; --retry-failed redoes
    them) and the other actors carry on.
    """
    import ray

    from ftsafe_ray.judge.rubric_client import error_result

    alive = list(actors)
    window = len(alive) * (math.ceil(2 * spec.max_concurrency / RUBRIC_BATCH) + 2)
    in_flight: dict[Any, tuple[Any, list[JudgeRequest], float]] = {}
    reserved, sent, count, turn = 0.0, 0, 0, 0
    while True:
        limit = window if check is None else len(alive)
        while alive and sent < len(requests) and len(in_flight) < limit:
            batch = ledger.affordable(requests[sent : sent + RUBRIC_BATCH], reserved)
            if not batch:
                break
            cost = sum(ledger.max_cost(r) for r in batch) if ledger.price else 0.0
            actor = alive[turn % len(alive)]
            in_flight[actor.judge_batch.remote(batch)] = (actor, batch, cost)
            reserved += cost
            sent += len(batch)
            turn += 1
        if not in_flight:
            if sent < len(requests) and not alive:
                raise JudgeError(
                    f"judges.rubric: every judge actor died; {len(requests) - sent} "
                    "answer(s) left unjudged, rerun to resume"
                )
            return count
        if check is not None:
            # The first batches are out: once the check passes, the window opens in full.
            _confirm(check, in_flight, store)
            check = None
            continue
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        actor, batch, cost = in_flight.pop(ref)
        reserved -= cost
        try:
            results = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            if actor in alive:
                alive.remove(actor)
            message = f"judge actor died: {type(error).__name__}"
            results = [error_result(r.key, message, 0, 0.0) for r in batch]
        store(results)
        count += len(results)


def _confirm(check: Any, in_flight: dict[Any, Any], store: Store) -> None:
    """Raise JudgeError in one line if the endpoint check failed, after storing what the
    batches sent beside it had answered (paid verdicts; their errors are left to do)."""
    import ray

    try:
        ray.get(check)
    except ray.exceptions.RayTaskError as error:
        for ref in in_flight:
            with contextlib.suppress(ray.exceptions.RayError):
                store([r for r in ray.get(ref) if r.status != "error"])
        cause = error.cause if isinstance(error.cause, JudgeError) else error
        raise JudgeError(f"judges.rubric: {cause}") from None
