"""The rubric judge online: batches of requests kept in flight on a pool of judge actors that
share one cluster-wide rate budget, each result handed back to be stored as it lands."""

from __future__ import annotations

import contextlib
import math
import threading
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
    """The judge actors of a campaign (or of one stage call) and the cluster-wide rate budget
    they pace through.

    Actor processes take seconds to start (a Python process, the HTTP client's imports), so
    `ftsafe run` starts the pool when the run begins: by the time answers are stored, the first
    requests go out at once. The endpoint check goes out once per pool. Close it when done (a
    context manager).
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
        self.checked = False  # the endpoint check passed: later passes skip it
        self.stopping = threading.Event()  # set: send no new batches, finish those in flight

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
            pool = own.enter_context(JudgePool(spec, access))
            actors = pool.actors
        else:
            actors = pool.live_actors()  # started ahead: any lost meanwhile replaced
        # The endpoint check goes out first (once per pool), but the first batches go right
        # behind it instead of a round trip later (see dispatch).
        check = None if pool.checked else actors[0].check.remote()
        count = dispatch(actors, requests, spec, ledger, store, check, pool.stopping.is_set)
        # Stored verdicts prove the check passed (stopped before any, it is still unknown).
        pool.checked = pool.checked or check is None or count > 0
        return count


def dispatch(
    actors: list[Any],
    requests: list[JudgeRequest],
    spec: RubricJudgeSpec,
    ledger: SpendLedger,
    store: Store,
    check: Any = None,
    stopping: Callable[[], bool] | None = None,
) -> int:
    """Keep every actor fed with a few batches, through the one actor pool the stages share
    (actor_pool.run_on_actors); stop sending when the budget is spent (or `stopping()` says
    so: the batches in flight are still stored).

    Until the endpoint `check` passes, each actor gets one batch and nothing is stored; should
    it fail, only the verdicts already paid for are kept (see _confirm). A batch whose actor
    died is stored as error results, not sent again (its requests may have been paid;
    --retry-failed redoes them), and the other actors carry on.
    """
    from ftsafe_ray.actor_pool import NO_ACTOR_LEFT, PoolSettings, run_on_actors
    from ftsafe_ray.judge.rubric_client import error_result

    window = math.ceil(2 * spec.max_concurrency / RUBRIC_BATCH) + 2
    batches = [requests[i : i + RUBRIC_BATCH] for i in range(0, len(requests), RUBRIC_BATCH)]
    state = {"reserved": 0.0, "count": 0, "left": 0}
    held: list[list[JudgeResult]] = []  # results that landed before the check passed
    costs: dict[int, float] = {}
    checked: list[bool] = []  # [True] once the check passed, [False] once it failed

    def admit(batch: list[JudgeRequest]) -> tuple[list | None, list | None]:
        if stopping is not None and stopping():
            return None, None
        send = ledger.affordable(batch, state["reserved"])
        if not send:
            return None, None
        cost = sum(ledger.max_cost(r) for r in send) if ledger.price else 0.0
        state["reserved"] += cost
        costs[id(send)] = cost
        return send, (batch[len(send) :] or None)

    def landed(batch: list[JudgeRequest], results: list[JudgeResult]) -> None:
        state["reserved"] -= costs.pop(id(batch), 0.0)
        if checked == [False]:  # the check failed: keep only what was paid for
            store([r for r in results if r.status != "error"])
        elif confirmed():
            store(results)
            state["count"] += len(results)
        else:
            held.append(results)

    def lost(batch: list[JudgeRequest], reason: str) -> None:
        state["reserved"] -= costs.pop(id(batch), 0.0)
        if reason.startswith(NO_ACTOR_LEFT):
            state["left"] += len(batch)  # never sent
            return
        store([error_result(r.key, f"judge batch lost: {reason}", 0, 0.0) for r in batch])
        state["count"] += len(batch)

    def confirmed() -> bool:
        """Whether the check passed (raising, in one line, once it failed)."""
        if check is None or checked == [True]:
            return True
        import ray

        done, _ = ray.wait([check], timeout=0)
        if not done:
            return False
        checked.append(False)
        _confirm(check, held, store)  # raises when the check failed
        checked[0] = True
        for results in held:
            store(results)
            state["count"] += len(results)
        held.clear()
        return True

    def poll() -> None:
        confirmed()

    settings = PoolSettings(
        num_actors=len(actors),
        in_flight_per_actor=window,
        max_restarts=0,
        max_tries=1,
        drain_on_error=True,
        poll_s=0.05 if check is not None else None,
    )
    run_on_actors(
        lambda: None,
        batches,
        lambda actor, batch: actor.judge_batch.remote(batch),
        landed,
        lost,
        settings,
        on_poll=poll,
        actors=actors,
        keep=True,
        admit=admit,
        in_flight=lambda: window if confirmed() else 1,
    )
    if check is not None and not checked:
        # Every batch landed before the check's reply: wait for it, then store them.
        _wait_for(check)
        confirmed()
    if state["left"]:
        raise JudgeError(
            f"judges.rubric: every judge actor died; {state['left']} "
            "answer(s) left unjudged, rerun to resume"
        )
    return int(state["count"])


def _wait_for(ref: Any) -> None:
    import ray

    ray.wait([ref], num_returns=1)


def _confirm(check: Any, held: list[list[JudgeResult]], store: Store) -> None:
    """Raise JudgeError in one line if the endpoint check failed, after storing what the
    batches sent beside it had answered (paid verdicts; their errors are left to do)."""
    import ray

    try:
        ray.get(check)
    except ray.exceptions.RayTaskError as error:
        for results in held:
            store([r for r in results if r.status != "error"])
        cause = error.cause if isinstance(error.cause, JudgeError) else error
        raise JudgeError(f"judges.rubric: {cause}") from None
    except ray.exceptions.RayActorError as error:
        for results in held:
            store([r for r in results if r.status != "error"])
        raise JudgeError(
            f"judges.rubric: the judge actor checking the endpoint died ({type(error).__name__}); "
            "rerun to resume"
        ) from None
