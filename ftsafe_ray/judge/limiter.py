"""Pacing for judge requests: a requests/min and tokens/min budget that callers await."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Pace a little under the provider's limit: a 429 is a signal to slow down, not flow control,
# and some providers count rejected requests against the quota. With a 1 s burst, a bucket at
# 97% of the limit admits at most 0.97 * 61/60 < 1 of the limit in any sliding minute.
PACE_FRACTION = 0.97
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

    def lower_limits(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        """Pace at these rates from now on if they are below the current ones (from headers)."""
        ...


def estimate_request_tokens(messages: Iterable[Mapping[str, str]], max_tokens: int) -> int:
    """Prompt tokens estimated as characters / 4 plus a few per message, plus `max_tokens`.

    Providers charge `max_tokens` against tokens/min at admission, so it is counted in full.
    """
    messages = list(messages)
    chars = sum(len(m.get("content") or "") for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages) + max_tokens


def paced(limit_per_minute: float | None, share: float = 1.0) -> float | None:
    """The rate to pace at for a provider limit: PACE_FRACTION of this process's share of it."""
    if limit_per_minute is None:
        return None
    return limit_per_minute * share * PACE_FRACTION


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str) -> float | None:
    """An `x-ratelimit-reset-*` duration ("1s", "6m0s", "20ms", "1h2m3.5s") in seconds."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


@dataclass(frozen=True)
class HeaderHint:
    """What a provider's `x-ratelimit-*` headers say: its limits and how long to hold back."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    pause_s: float | None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError, OverflowError):  # absent, not a number, or inf
        return None


def _limit_header(headers: Mapping[str, str], name: str) -> int | None:
    """A provider's limit, or None: a limit of zero or less says nothing we can pace at.

    Some gateways send 0 for "unlimited" or "unknown"; paced at, it would divide by zero
    in every later acquire and fail every remaining request.
    """
    value = _int_header(headers, name)
    return value if value is not None and value > 0 else None


def read_ratelimit_headers(headers: Mapping[str, str], next_cost: int) -> HeaderHint:
    """Read OpenAI-style `x-ratelimit-*` headers of a successful reply.

    A spent quota (no requests left, or fewer tokens left than one more request of
    `next_cost`) asks for a pause until the provider says it resets.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    pause = None
    for kind, need in (("requests", 1), ("tokens", next_cost)):
        remaining = _int_header(lowered, f"x-ratelimit-remaining-{kind}")
        reset = parse_reset(lowered.get(f"x-ratelimit-reset-{kind}", ""))
        if remaining is not None and reset is not None and remaining < need:
            pause = max(pause or 0.0, reset)
    return HeaderHint(
        _limit_header(lowered, "x-ratelimit-limit-requests"),
        _limit_header(lowered, "x-ratelimit-limit-tokens"),
        pause,
    )


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
        self._burst_s = burst_s
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

    def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
        """Lower a bucket's rate to a provider-reported limit (paced); never raise it.

        A limit of zero or less is no information (see _limit_header), never a rate of zero.
        """
        now = self._clock()
        for name, limit in (("_requests", requests_per_minute), ("_tokens", tokens_per_minute)):
            rate = paced(limit)
            if rate is None or rate <= 0:
                continue
            bucket = getattr(self, name)
            if bucket is None:
                setattr(self, name, _Bucket(rate, self._burst_s, now))
            elif rate / 60.0 < bucket.rate:
                bucket.refill(now)
                bucket.rate = rate / 60.0
                bucket.capacity = max(bucket.rate * self._burst_s, 1.0)
                bucket.level = min(bucket.level, bucket.capacity)

    def set_rates(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        """Pace at exactly these (already paced) rates, higher or lower; None: unlimited.

        For a new configuration, which replaces any limit lowered from headers before it.
        """
        now = self._clock()
        for name, rate in (("_requests", requests_per_minute), ("_tokens", tokens_per_minute)):
            bucket = getattr(self, name)
            if not rate or rate <= 0:
                setattr(self, name, None)
            elif bucket is None:
                setattr(self, name, _Bucket(rate, self._burst_s, now))
            else:
                bucket.refill(now)
                bucket.rate = rate / 60.0
                bucket.capacity = max(bucket.rate * self._burst_s, 1.0)
                bucket.level = min(bucket.level, bucket.capacity)

    @property
    def rates_per_minute(self) -> tuple[float | None, float | None]:
        """The paced requests/min and tokens/min in force (None: unlimited)."""
        return tuple(  # type: ignore[return-value]
            None if b is None else b.rate * 60.0 for b in (self._requests, self._tokens)
        )
