"""Pacing for judge requests: a requests/min and tokens/min budget that callers await."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Pace a little under the provider's limit: a 429 is a signal to slow down, not flow control,
# and some providers count rejected requests against the quota.
PACE_FRACTION = 0.9
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
# Float rounding can leave a wait of a few ulps after sleeping exactly the computed time; with
# a large clock value such a sleep does not advance the clock, so treat it as no wait.
_TOLERANCE_S = 1e-6


class RateBudget(Protocol):
    """What a judge client needs from a limiter; a cluster-wide backend implements the same."""

    async def acquire(self, tokens: int) -> None:
        """Wait until one request costing `tokens` fits both budgets, then spend them."""
        ...

    def slow_down(self, delay_s: float) -> None:
        """Hold back every acquire for `delay_s` seconds (called after a 429)."""
        ...


def estimate_request_tokens(messages: Iterable[Mapping[str, str]], max_tokens: int) -> int:
    """Prompt tokens estimated as characters / 4 plus a few per message, plus `max_tokens`.

    Providers charge `max_tokens` against tokens/min at admission, so it is counted in full.
    """
    messages = list(messages)
    chars = sum(len(m.get("content") or "") for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages) + max_tokens


def paced(limit_per_minute: int | None, share: float = 1.0) -> float | None:
    """The rate to pace at for a provider limit: PACE_FRACTION of this process's share of it."""
    if limit_per_minute is None:
        return None
    return limit_per_minute * share * PACE_FRACTION


class _Bucket:
    """A token bucket refilled continuously at `per_minute / 60` per second."""

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, 1.0)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` may be spent; a cost above capacity waits for a full bucket."""
        need = min(cost, self.capacity) - self.level
        return max(0.0, need / self.rate)


class RateLimiter:
    """A per-process limiter on requests/min and tokens/min; acquire() waits for both.

    Each budget is a token bucket holding `burst_s` seconds of its rate, so requests go out
    evenly instead of in one burst per minute. Waiters are served in arrival order. A request
    larger than a bucket waits for a full bucket and leaves it in debt, which later requests
    repay by waiting, so the average rate never exceeds the limit.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        burst_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        now = clock()
        self._requests = _Bucket(requests_per_minute, burst_s, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, burst_s, now) if tokens_per_minute else None
        self._clock = clock
        self._sleep = sleep
        self._paused_until = now
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of `tokens` fits both budgets, then spend them."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                for bucket, cost in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(cost))
                if wait <= _TOLERANCE_S:
                    break
                await self._sleep(wait)
            for bucket, cost in ((self._requests, 1), (self._tokens, tokens)):
                if bucket is not None:
                    bucket.level -= cost

    def slow_down(self, delay_s: float) -> None:
        """Admit nothing for `delay_s` seconds from now (never shortens an earlier pause)."""
        self._paused_until = max(self._paused_until, self._clock() + delay_s)
