"""One way to run work items on a pool of Ray actors that may die.

Fine-tuning, generation and the online rubric judge all hand items to a few long-running actors
and store each result as it lands. Ray's own `max_restarts`/`max_task_retries` would replay a
dead actor's tasks without telling us, forever for a repeatable failure (an out-of-memory unit
kills every replacement), so the pool does it itself: a dead actor is replaced up to
`max_restarts` times, the items it held are redone up to `max_tries` in all, and an item whose
actor dies again is reported lost (the caller stores an error row) while the rest of the
campaign carries on. The stage loops stay about their own rows.

The judge adds what paid work needs: `admit` (send an item only when the spend budget allows,
maybe in part), a per-actor window that opens later (`in_flight`, after the endpoint check),
`max_tries=1` (a batch whose actor died may have been paid: not sent again), and
`drain_on_error` (results already in flight are still delivered when an error ends the run).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

# An item is tried at most this many times when the actor running it dies (the first try and
# one redo), so a unit that kills its actor every time costs two actor deaths, not a campaign.
MAX_TRIES = 2
# How `on_lost` reasons start for items never sent because every actor died.
NO_ACTOR_LEFT = "no actor left"


@dataclass(frozen=True)
class PoolSettings:
    """How many actors, how much each holds at once, and how many replacements the pool makes."""

    num_actors: int
    in_flight_per_actor: int = 1
    max_restarts: int = 2
    poll_s: float | None = None
    max_tries: int = MAX_TRIES
    drain_on_error: bool = False


@dataclass
class _Slot(Generic[Item]):
    actor: Any
    held: int = 0
    alone: bool = False  # running a redo by itself


def run_on_actors(
    make_actor: Callable[[], Any],
    items: Sequence[Item],
    submit: Callable[[Any, Item], Any],
    on_result: Callable[[Item, Any], None],
    on_lost: Callable[[Item, str], None],
    settings: PoolSettings,
    on_poll: Callable[[], None] | None = None,
    actors: Sequence[Any] = (),
    keep: bool = False,
    admit: Callable[[Item], tuple[Item | None, Item | None]] | None = None,
    in_flight: Callable[[], int] | None = None,
) -> list[Any]:
    """Run `submit(actor, item)` for every item; call `on_result` with each item's result.

    `on_lost(item, reason)` is called for an item whose actor died on each of its `MAX_TRIES`
    tries, or that no actor was left to run. `on_poll` runs every `settings.poll_s` seconds while
    waiting. `actors` are live actors to use before starting new ones (kept from an earlier
    call: no second engine start). With `keep`, the live actors are returned when every item is
    done instead of killed; otherwise, and whenever an error (Ctrl-C included) ends the run,
    every actor is killed on the way out. Errors raised inside a task (not actor deaths)
    propagate (after the other results in flight are delivered, with `drain_on_error`).

    `admit(item)` → (part to send now or None, part to try later or None): None to send means
    "not now"; the pool asks again after the next result, and stops when nothing is in flight.
    `in_flight()`, when given, is the per-actor limit at each moment instead of the setting's.
    """
    import ray

    queue: deque[Item] = deque(items)
    tries: dict[int, int] = {}
    spare = list(actors)
    wanted = min(settings.num_actors, len(queue))
    slots = [_Slot[Item](spare.pop(0) if spare else make_actor()) for _ in range(wanted)]
    restarts = 0
    pending: dict[Any, tuple[_Slot[Item], Item]] = {}

    def fill() -> None:
        limit = settings.in_flight_per_actor if in_flight is None else in_flight()
        for slot in slots:
            while queue and not slot.alone and slot.held < limit:
                # A redo runs alone on its actor: when an actor dies holding several items, only
                # the one that kills it again is lost, not the others that shared it.
                if tries.get(id(queue[0]), 0) and slot.held:
                    break
                item = queue.popleft()
                if admit is not None:
                    send, later = admit(item)
                    if later is not None or send is None:
                        queue.appendleft(item if later is None else later)
                    if send is None:
                        return  # not now: asked again after the next result
                    item = send
                tries[id(item)] = tries.get(id(item), 0) + 1
                slot.alone = tries[id(item)] > 1
                pending[submit(slot.actor, item)] = (slot, item)
                slot.held += 1

    try:
        fill()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=settings.poll_s)
            if on_poll is not None:
                on_poll()
            if not ready:
                continue
            slot, item = pending.pop(ready[0])
            slot.held -= 1
            slot.alone = False
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:
                _raise_user_error(error)
                raise
            except ray.exceptions.RayActorError as error:
                reason = _death(error)
                if tries[id(item)] < settings.max_tries:
                    queue.appendleft(item)
                else:
                    tries_text = f" on each of {settings.max_tries} tries"
                    tried = tries_text if settings.max_tries > 1 else ""
                    on_lost(item, f"its actor died{tried} ({reason})")
                if slot in slots:
                    slots.remove(slot)
                    ray.kill(slot.actor)
                    if restarts < settings.max_restarts:
                        restarts += 1
                        slots.append(_Slot[Item](make_actor()))
                if not slots:
                    while queue:
                        on_lost(queue.popleft(), f"{NO_ACTOR_LEFT} after {restarts} restart(s)")
            else:
                on_result(item, result)
            fill()
    except BaseException as error:
        keep = False
        if settings.drain_on_error and not isinstance(error, KeyboardInterrupt):
            _deliver(pending, on_result)
        raise
    finally:
        live = [slot.actor for slot in slots] + spare
        if not keep:
            for actor in live:
                ray.kill(actor)
    return live if keep else []


def _deliver(pending: dict[Any, tuple[Any, Any]], on_result: Callable[[Any, Any], None]) -> None:
    """Hand on the results of everything still in flight (failed ones dropped), while an error
    ends the run: a callback that fails now stops this, and the first error is the one raised."""
    import ray

    with contextlib.suppress(Exception):
        for ref, (_, item) in pending.items():
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            on_result(item, result)
    pending.clear()


def _raise_user_error(error: Any) -> None:
    """Re-raise a user-facing error from a task as itself (one line, no traceback)."""
    from ftsafe_ray.errors import FtsafeError

    if isinstance(error.cause, FtsafeError):
        raise error.cause from None


def _death(error: BaseException) -> str:
    """The first line of Ray's account of an actor's death."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
