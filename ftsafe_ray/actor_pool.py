"""One way to run work items on a pool of Ray actors that may die.

Fine-tuning and generation both hand items to a few long-running actors and store each result as
it lands. Ray's own `max_restarts`/`max_task_retries` would replay a dead actor's tasks without
telling us, forever for a repeatable failure (an out-of-memory unit kills every replacement), so
the pool does it itself: a dead actor is replaced up to `max_restarts` times, the items it held
are redone once, and an item whose actor dies again is reported lost (the caller stores an error
row) while the rest of the campaign carries on. The stage loops stay about their own rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

# An item is tried at most this many times when the actor running it dies (the first try and
# one redo), so a unit that kills its actor every time costs two actor deaths, not a campaign.
MAX_TRIES = 2


@dataclass(frozen=True)
class PoolSettings:
    """How many actors, how much each holds at once, and how many replacements the pool makes."""

    num_actors: int
    in_flight_per_actor: int = 1
    max_restarts: int = 2
    poll_s: float | None = None


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
) -> None:
    """Run `submit(actor, item)` for every item; call `on_result` with each item's result.

    `on_lost(item, reason)` is called for an item whose actor died on each of its `MAX_TRIES`
    tries, or that no actor was left to run. `on_poll` runs every `settings.poll_s` seconds while
    waiting. Errors raised inside a task (not actor deaths) propagate; every actor is killed on
    the way out, Ctrl-C included.
    """
    import ray

    queue: deque[Item] = deque(items)
    tries: dict[int, int] = {}
    slots = [_Slot[Item](make_actor()) for _ in range(min(settings.num_actors, len(queue)))]
    restarts = 0
    in_flight: dict[Any, tuple[_Slot[Item], Item]] = {}

    def fill() -> None:
        for slot in slots:
            while queue and not slot.alone and slot.held < settings.in_flight_per_actor:
                # A redo runs alone on its actor: when an actor dies holding several items, only
                # the one that kills it again is lost, not the others that shared it.
                if tries.get(id(queue[0]), 0) and slot.held:
                    break
                item = queue.popleft()
                tries[id(item)] = tries.get(id(item), 0) + 1
                slot.alone = tries[id(item)] > 1
                in_flight[submit(slot.actor, item)] = (slot, item)
                slot.held += 1

    try:
        fill()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=settings.poll_s)
            if on_poll is not None:
                on_poll()
            if not ready:
                continue
            slot, item = in_flight.pop(ready[0])
            slot.held -= 1
            slot.alone = False
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:
                _raise_user_error(error)
                raise
            except ray.exceptions.RayActorError as error:
                reason = _death(error)
                if tries[id(item)] < MAX_TRIES:
                    queue.appendleft(item)
                else:
                    on_lost(item, f"its actor died on each of {MAX_TRIES} tries ({reason})")
                if slot in slots:
                    slots.remove(slot)
                    ray.kill(slot.actor)
                    if restarts < settings.max_restarts:
                        restarts += 1
                        slots.append(_Slot[Item](make_actor()))
                if not slots:
                    while queue:
                        on_lost(queue.popleft(), f"no actor left after {restarts} restart(s)")
            else:
                on_result(item, result)
            fill()
    finally:
        for slot in slots:
            ray.kill(slot.actor)


def _raise_user_error(error: Any) -> None:
    """Re-raise a user-facing error from a task as itself (one line, no traceback)."""
    from ftsafe_ray.errors import FtsafeError

    if isinstance(error.cause, FtsafeError):
        raise error.cause from None


def _death(error: BaseException) -> str:
    """The first line of Ray's account of an actor's death."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
