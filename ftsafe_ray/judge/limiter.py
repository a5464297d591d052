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
# and some providers count rejected requests against the quota. With a burst of BURST_S, a
# bucket at 97% of the limit admits at most 0.97 * 60.25/60 < 1 of the limit in any sliding
# minute, and never empties a provider's bucket one second deep.
PACE_FRACTION = 0.97
# Seconds of the paced rate that may go out at once. Small, so admissions are spread evenly
# (a second's worth at once empties a one-second provider bucket), yet enough that a waiter
# woken a little late does not lose its turn for good.
BURST_S = 0.25
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
# A provider's `x-ratelimit-remaining-*: 0` asks for a pool-wide pause only when its reset is
# at least this far off: a short bucket (one second deep) reports an empty bucket as routine
# at full rate, and refills before the pause would end; pacing, not pausing, handles it.
MIN_HEADER_PAUSE_S = 2.0
# Windows a provider's limit header may describe instead of a minute: a limit header equal to
# the configured per-minute limit times window/60 describes that window (Azure: 10 s).
SHORT_WINDOWS_S = (1.0, 10.0)
MINUTE_S = 60.0
# How close a limit header must be to the configured one (or its share of a short window).
_LIMIT_TOLERANCE = 0.02
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

    def lower_limits(
        self, requests_per_minute: float | None, tokens_per_minute: float | None
    ) -> None:
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
    """What a provider's `x-ratelimit-*` headers say: its per-minute limits, the shortest
    window its headers describe, and how long they ask to hold back (see header_pause)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    pause_s: float | None
    window_s: float = MINUTE_S


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


def header_window_s(reported: int, configured: int | None) -> float:
    """The window a limit header describes, read against the configured per-minute limit.

    A header equal to (or above) the configured limit, or with nothing configured to compare,
    is per minute. One equal to the configured limit's share of a short window (10 for 600/min
    and a 1 s window) describes that window: the provider's limit is still the configured
    one. Any other value is a lower per-minute limit.
    """
    if configured is None or reported >= configured * (1 - _LIMIT_TOLERANCE):
        return MINUTE_S
    for window in SHORT_WINDOWS_S:
        if abs(reported * MINUTE_S / window - configured) <= configured * _LIMIT_TOLERANCE:
            return window
    return MINUTE_S


def read_ratelimit_headers(
    headers: Mapping[str, str],
    next_cost: int,
    configured: tuple[int | None, int | None] = (None, None),
) -> HeaderHint:
    """Read OpenAI-style `x-ratelimit-*` headers of a successful reply.

    Limits come back per minute, whatever window the headers describe (judged against the
    `configured` requests/min and tokens/min, see header_window_s). A spent quota (no
    requests left, or fewer tokens left than one more request of `next_cost`) reports how
    long until the provider says it resets; header_pause decides whether that is a pause.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    pause = None
    limits: list[int | None] = []
    window = MINUTE_S
    for kind, need, limit_configured in (
        ("requests", 1, configured[0]),
        ("tokens", next_cost, configured[1]),
    ):
        remaining = _int_header(lowered, f"x-ratelimit-remaining-{kind}")
        reset = parse_reset(lowered.get(f"x-ratelimit-reset-{kind}", ""))
        if remaining is not None and reset is not None and remaining < need:
            pause = max(pause or 0.0, reset)
        reported = _limit_header(lowered, f"x-ratelimit-limit-{kind}")
        if reported is None:
            limits.append(None)
            continue
        kind_window = header_window_s(reported, limit_configured)
        window = min(window, kind_window)
        limits.append(round(reported * MINUTE_S / kind_window))
    return HeaderHint(limits[0], limits[1], pause, window)


def header_pause(hint: HeaderHint, sent_at: float, now: float, superseded: bool) -> float | None:
    """Seconds to pause the whole pool for a reply's spent-quota headers, or None.

    The headers describe the provider's bucket when the request was admitted (`sent_at`),
    not now. They ask for no pause when they describe a short window, when a request sent
    after this one has been admitted since (`superseded`: the quota was not spent for long),
    or when what is left of the reset is under MIN_HEADER_PAUSE_S (a short bucket's routine
    "empty"). What stays is a quota spent for long: a minute's limit used up by someone else
    on the same key, or lower than the one configured.
    """
    if hint.pause_s is None or hint.window_s < MINUTE_S or superseded:
        return None
    left = sent_at + hint.pause_s - now
    return left if left >= MIN_HEADER_PAUSE_S else None


class TokenCount:
    """Request costs in the provider's count of tokens, learned from the usage it reports.

    Until a reply reports usage, a request costs estimate_request_tokens (characters / 4, a
    few per message, max_tokens). After, its prompt costs characters / 4 scaled by the ratio
    of the prompt tokens the provider reported to characters / 4 so far, never below
    characters / 4 (what OpenAI's limiter counts), plus max_tokens. Overcounting by a few
    tokens a request paces that much under the limit, all run long.
    """

    def __init__(self) -> None:
        self._reported = 0
        self._estimated = 0

    @staticmethod
    def prompt_chars_tokens(messages: Iterable[Mapping[str, str]]) -> int:
        """Characters / 4 of a request's messages, rounded up."""
        return math.ceil(sum(len(m.get("content") or "") for m in messages) / CHARS_PER_TOKEN)

    def cost(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        """What one request of these messages and `max_tokens` costs against tokens/min."""
        if not self._estimated:
            return estimate_request_tokens(messages, max_tokens)
        ratio = max(1.0, self._reported / self._estimated)
        return math.ceil(self.prompt_chars_tokens(messages) * ratio) + max_tokens

    def observe(self, messages: list[dict[str, str]], prompt_tokens: int | None) -> None:
        """Learn from the prompt tokens a reply to these messages reported (None: nothing)."""
        if prompt_tokens is None or prompt_tokens <= 0:
            return
        self._reported += prompt_tokens
        self._estimated += max(1, self.prompt_chars_tokens(messages))


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

    Each budget is a token bucket holding `burst_s` seconds of its rate (BURST_S: a fraction
    of a second), so requests go out evenly at the paced rate, not a second's worth at once.
    Waiters are served in arrival order. A request larger than a bucket waits for a full
    bucket and leaves it in debt, which later requests repay by waiting, so the average rate
    never exceeds the limit.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        burst_s: float = BURST_S,
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
        """Admit nothing for `delay_s` seconds from now (never shortens an earlier pause).

        For a 429 (its Retry-After) or a quota spent for long (see header_pause); the buckets
        refill during the pause only up to their small burst, so it ends without a rush.
        """
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
