"""The requests/min + tokens/min limiter, driven by a fake clock."""

import asyncio
import random

import pytest

from ftsafe_ray.judge.limiter import (
    PACE_FRACTION,
    RateLimiter,
    estimate_request_tokens,
    paced,
)


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def admit_times(limiter, clock, costs):
    async def run():
        times = []
        for cost in costs:
            await limiter.acquire(cost)
            times.append(clock.now - 1000.0)
        return times

    return asyncio.run(run())


def test_no_limits_never_waits():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    assert admit_times(limiter, clock, [10**6] * 50) == [0.0] * 50
    assert clock.sleeps == []


def test_requests_per_minute_spaces_requests_evenly():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=60, clock=clock, sleep=clock.sleep)
    assert admit_times(limiter, clock, [1] * 5) == pytest.approx([0, 1, 2, 3, 4])


def test_tokens_per_minute_binds_when_prompts_are_long():
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_minute=10_000,
        tokens_per_minute=6_000,
        burst_s=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    # 100 tokens/s, a 1 s bucket: a 200-token request waits for a full bucket, then leaves
    # a 100-token debt.
    assert admit_times(limiter, clock, [200, 200, 200, 50]) == pytest.approx([0, 2, 4, 5.5])


def test_both_budgets_hold_in_every_minute_window():
    clock = FakeClock()
    rpm, tpm = 120, 30_000
    limiter = RateLimiter(rpm, tpm, clock=clock, sleep=clock.sleep)
    rng = random.Random(0)
    costs = [rng.randint(50, 1500) for _ in range(400)]
    times = admit_times(limiter, clock, costs)
    burst_s, biggest = 1.0, max(costs)
    for start in times:
        window = [c for t, c in zip(times, costs, strict=True) if start <= t < start + 60]
        assert len(window) <= rpm * (60 + burst_s) / 60 + 1
        assert sum(window) <= tpm * (60 + burst_s) / 60 + biggest
    assert sum(costs) / (times[-1] - times[0]) * 60 <= tpm * 1.01


def test_concurrent_waiters_are_served_in_arrival_order():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=60, clock=clock, sleep=clock.sleep)
    order = []

    async def one(i):
        await limiter.acquire(1)
        order.append((i, clock.now - 1000.0))

    async def run():
        await asyncio.gather(*(one(i) for i in range(6)))

    asyncio.run(run())
    assert [i for i, _ in order] == list(range(6))
    assert [t for _, t in order] == pytest.approx([0, 1, 2, 3, 4, 5])


def test_slow_down_holds_back_every_acquire():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=6000, clock=clock, sleep=clock.sleep)
    limiter.slow_down(5.0)
    limiter.slow_down(2.0)  # a shorter pause never cuts an earlier one short
    assert admit_times(limiter, clock, [1, 1]) == pytest.approx([5.0, 5.0])


def test_token_estimate_counts_prompt_and_max_tokens():
    messages = [{"role": "system", "content": "x" * 200}, {"role": "user", "content": "y" * 201}]
    assert estimate_request_tokens(messages, max_tokens=100) == 101 + 2 * 4 + 100
    assert estimate_request_tokens(iter(messages), max_tokens=0) == 109


def test_paced_rate_is_just_under_the_limit():
    assert paced(None) is None
    assert paced(1000) == pytest.approx(1000 * PACE_FRACTION)
    assert paced(1000, share=0.25) == pytest.approx(250 * PACE_FRACTION)


def test_reset_durations_and_header_hints():
    from ftsafe_ray.judge.limiter import parse_reset, read_ratelimit_headers

    assert parse_reset("6m0s") == 360.0 and parse_reset("20ms") == pytest.approx(0.02)
    assert parse_reset("1h2m3.5s") == pytest.approx(3723.5) and parse_reset("2") == 2.0
    assert parse_reset("soon") is None and parse_reset("") is None
    spent = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "X-RateLimit-Limit-Tokens": "90000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "3s",
    }
    hint = read_ratelimit_headers(spent, next_cost=1000)
    assert (hint.requests_per_minute, hint.tokens_per_minute, hint.pause_s) == (600, 90000, 3.0)
    plenty = {**spent, "x-ratelimit-remaining-requests": "5", "x-ratelimit-remaining-tokens": "9e4"}
    assert read_ratelimit_headers(plenty, next_cost=1000).pause_s is None
    assert read_ratelimit_headers({}, 10).requests_per_minute is None


def test_lower_limits_only_ever_lowers():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)
    limiter.lower_limits(6000, None)
    assert limiter.rates_per_minute == (600, None)
    limiter.lower_limits(60, 6000)
    assert limiter.rates_per_minute == pytest.approx((60 * PACE_FRACTION, 6000 * PACE_FRACTION))
    assert admit_times(limiter, clock, [1, 1, 1])[1:] == pytest.approx(
        [1 / PACE_FRACTION, 2 / PACE_FRACTION], abs=0.05
    )


@pytest.mark.reliability(
    fault="A provider header x-ratelimit-limit-* of 0, negative or unreadable",
    outcome="ignored as no information; no division by zero, no error rows",
)
@pytest.mark.parametrize("value", ["0", "-5", "0.4", "abc", "inf", "nan", ""])
def test_a_limit_header_of_zero_or_nonsense_says_nothing(value):
    from ftsafe_ray.judge.limiter import read_ratelimit_headers

    headers = {"x-ratelimit-limit-requests": value, "x-ratelimit-limit-tokens": value}
    hint = read_ratelimit_headers(headers, next_cost=10)
    assert (hint.requests_per_minute, hint.tokens_per_minute) == (None, None)


def test_a_zero_limit_never_becomes_a_rate_of_zero():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=600, clock=clock, sleep=clock.sleep)
    limiter.lower_limits(0, 0)
    limiter.lower_limits(-1, None)
    assert limiter.rates_per_minute == (600, None)
    assert admit_times(limiter, clock, [1, 1]) == [0.0, 0.0]


def test_set_rates_raises_lowers_and_lifts_limits():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=60, clock=clock, sleep=clock.sleep)
    limiter.set_rates(600, 6000)
    assert limiter.rates_per_minute == (600, 6000)
    limiter.set_rates(None, 0)
    assert limiter.rates_per_minute == (None, None)
    assert admit_times(limiter, clock, [10**6] * 3) == [0.0] * 3
