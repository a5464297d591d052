"""Pacing at a provider's limit whatever its rate-limit headers mean: admissions spread evenly,
`x-ratelimit-*` read as information (never a pool-wide stop for a short bucket's "empty"), a
429's Retry-After honoured, and the test server's provider behaviours."""

from __future__ import annotations

import asyncio
import math

import pytest

from ftsafe_ray.judge import JudgeRequest, RubricJudgeClient
from ftsafe_ray.judge.limiter import (
    BURST_S,
    MIN_HEADER_PAUSE_S,
    PACE_FRACTION,
    HeaderHint,
    RateLimiter,
    TokenCount,
    estimate_request_tokens,
    header_pause,
    header_window_s,
    read_ratelimit_headers,
)
from ftsafe_ray.spec import RubricJudgeSpec
from tests.fixtures.judge_server import JudgeServer, verdict, with_headers
from tests.test_judge_limiter import FakeClock, admit_times


def spec(**overrides: object) -> RubricJudgeSpec:
    settings: dict[str, object] = {
        "model": "test-judge",
        "max_retries": 3,
        "timeout_s": 5.0,
        "max_tokens": 64,
    }
    return RubricJudgeSpec(**{**settings, **overrides})


def requests(n: int) -> list[JudgeRequest]:
    return [
        JudgeRequest(f"k{i}", f"instruction {i}", "Locks are mechanical devices.") for i in range(n)
    ]


class RecordingSleep:
    """A sleep that records each delay and really sleeps `scale` of it."""

    def __init__(self, scale: float = 0.0) -> None:
        self.delays: list[float] = []
        self.scale = scale

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds * self.scale)


def run_client(
    server: JudgeServer, judge_spec: RubricJudgeSpec, n: int, sleep: RecordingSleep
) -> tuple[list[str], RateLimiter]:
    limiter = RateLimiter(
        None if judge_spec.requests_per_minute is None else judge_spec.requests_per_minute * 0.97,
        None,
        sleep=sleep,
    )

    async def run() -> list[str]:
        async with RubricJudgeClient(
            judge_spec, "k", server.base_url, limiter=limiter, sleep=sleep, draw=lambda: 0.0
        ) as client:
            return [r.status for r in await client.judge_many(requests(n))]

    return asyncio.run(run()), limiter


# --- the limiter: even admissions --------------------------------------------------------


def test_admissions_are_spread_evenly_not_a_seconds_worth_at_once():
    clock = FakeClock()
    limiter = RateLimiter(600 * PACE_FRACTION, clock=clock, sleep=clock.sleep)
    times = admit_times(limiter, clock, [1] * 30)
    # At most the small burst goes out at once, then one request every 1/9.7 s.
    at_once = sum(t == 0.0 for t in times)
    assert at_once <= math.ceil(9.7 * BURST_S) < 9.7
    gaps = [b - a for a, b in zip(times[at_once:], times[at_once + 1 :], strict=False)]
    assert gaps == pytest.approx([60 / (600 * PACE_FRACTION)] * len(gaps))
    # In no second does it admit more than a second's worth at the paced rate plus the burst.
    for start in times:
        assert sum(start <= t < start + 1 for t in times) <= 9.7 + 9.7 * BURST_S + 1


def test_tokens_are_paced_evenly_too():
    clock = FakeClock()
    limiter = RateLimiter(None, 60_000, clock=clock, sleep=clock.sleep)  # 1,000 tokens/s
    times = admit_times(limiter, clock, [100] * 40)
    assert sum(t == 0.0 for t in times) <= 1000 * BURST_S / 100
    assert times[-1] == pytest.approx((40 * 100 - 1000 * BURST_S) / 1000)


def test_after_a_pause_the_pool_resumes_at_the_pace_not_in_a_burst():
    clock = FakeClock()
    limiter = RateLimiter(600, clock=clock, sleep=clock.sleep)  # 10/s, a burst of 2.5
    limiter.slow_down(5.0)
    times = admit_times(limiter, clock, [1] * 12)
    assert times[0] == pytest.approx(5.0)
    assert sum(t == pytest.approx(5.0) for t in times) <= math.ceil(10 * BURST_S)
    assert times[-1] == pytest.approx(5.0 + (12 - 10 * BURST_S) / 10)


# --- headers as information ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "configured", "window"),
    [
        (600, 600, 60.0),  # equal to the configured per-minute limit: a minute
        (900, 600, 60.0),  # above it: per minute too (never raises the pace)
        (10, 600, 1.0),  # a 60th: a one-second bucket of the same limit
        (100, 600, 10.0),  # a 6th: a ten-second window
        (300, 600, 60.0),  # anything else: a lower per-minute limit
        (10, None, 60.0),  # nothing configured to compare: per minute
    ],
)
def test_the_window_a_limit_header_describes(reported, configured, window):
    assert header_window_s(reported, configured) == window


def test_limits_come_back_per_minute_whatever_window_the_headers_describe():
    second = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-limit-tokens": "10000",
    }
    hint = read_ratelimit_headers(second, 1000, configured=(600, 600_000))
    assert (hint.requests_per_minute, hint.tokens_per_minute, hint.window_s) == (600, 600_000, 1.0)
    minute = {**second, "x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "600000"}
    hint = read_ratelimit_headers(minute, 1000, configured=(600, 600_000))
    assert (hint.requests_per_minute, hint.tokens_per_minute, hint.window_s) == (600, 600_000, 60)
    lower = read_ratelimit_headers(minute, 1000, configured=(1200, None))
    assert lower.requests_per_minute == 600  # a real, lower limit: the pace comes down to it


def test_an_empty_short_bucket_never_pauses_the_pool():
    # remaining 0, reset within the second: a one-second bucket at full rate, as routine.
    spent = HeaderHint(600, None, pause_s=0.9)
    assert header_pause(spent, sent_at=100.0, now=100.3, superseded=False) is None
    # Headers that describe a short window ask for no pause, however long their reset.
    short = HeaderHint(600, None, pause_s=9.0, window_s=10.0)
    assert header_pause(short, sent_at=100.0, now=100.3, superseded=False) is None


def test_a_minute_quota_spent_for_long_pauses_until_it_resets_unless_since_admitted():
    spent = HeaderHint(2, None, pause_s=58.0)
    # The reset counts from when the request was sent, not from when its reply came.
    assert header_pause(spent, sent_at=100.0, now=101.5, superseded=False) == pytest.approx(56.5)
    # A request sent after it has been admitted since: the quota had room, no pause.
    assert header_pause(spent, sent_at=100.0, now=101.5, superseded=True) is None
    # What is left of the reset by the time the reply comes is what counts.
    late = HeaderHint(2, None, pause_s=MIN_HEADER_PAUSE_S + 0.5)
    assert header_pause(late, sent_at=100.0, now=101.0, superseded=False) is None


def test_a_short_buckets_remaining_zero_headers_never_stall_the_client(judge_server):
    # Every reply says the one-second bucket is empty; the limit header is per minute.
    empty = with_headers(
        verdict(),
        x_ratelimit_limit_requests="600",
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="900ms",
    )
    judge_server.set_behaviour(empty)
    sleep = RecordingSleep(scale=1.0)
    statuses, limiter = run_client(
        judge_server, spec(requests_per_minute=600, max_concurrency=4), 8, sleep
    )
    assert statuses == ["ok"] * 8
    # Only pacing waits (1/9.7 s each): no pause for the reset of an empty bucket.
    assert max(sleep.delays, default=0.0) < 0.2
    assert limiter.rates_per_minute[0] == pytest.approx(600 * PACE_FRACTION)


# --- 429s: Retry-After and retry-after-ms, from a rate-limited server ---------------------


@pytest.mark.parametrize("retry_after", ["seconds", "ms"])
def test_a_429s_retry_after_in_seconds_or_ms_is_honoured(judge_server, retry_after):
    # One request per 0.4 s bucket and no configured limit: the second request is rejected
    # and told (Retry-After, or retry-after-ms only) how long until the bucket holds one.
    judge_server.set_rate_limit(1, None, window_s=0.4, mode="bucket", retry_after=retry_after)
    sleep = RecordingSleep(scale=1.0)
    statuses, _ = run_client(judge_server, spec(max_concurrency=2), 2, sleep)
    assert statuses == ["ok", "ok"]
    assert judge_server.rejected == 1 and len(judge_server.chat_requests) == 3
    # The retry waited as long as asked (draw 0: no jitter), and then was admitted.
    [delay] = [d for d in sleep.delays if d > 0.05]
    assert 0.3 < delay <= 0.41


# --- token counts learned from usage --------------------------------------------------------


def test_token_costs_follow_the_providers_reported_prompt_tokens_never_below_chars_over_4():
    messages = [{"role": "system", "content": "x" * 400}, {"role": "user", "content": "y" * 400}]
    count = TokenCount()
    assert count.cost(messages, 64) == estimate_request_tokens(messages, 64) == 200 + 8 + 64
    count.observe(messages, 199)  # the provider counts a little under characters / 4
    assert count.cost(messages, 64) == 200 + 64
    count.observe(messages, 401)  # ...then more: (199 + 401) / 400 = 1.5
    assert count.cost(messages, 64) == 300 + 64
    count.observe(messages, None)  # no usage reported: nothing learned
    assert count.cost(messages, 64) == 300 + 64


# --- the test server's provider behaviours ------------------------------------------------


def chat(server: JudgeServer, chars: int = 400) -> tuple[int, dict[str, str]]:
    body = {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x" * chars}]}
    status, _, headers = server.answer_chat(body)
    return status, dict(headers)


def test_server_one_second_bucket_reports_the_second_with_a_per_minute_limit():
    server = JudgeServer()
    server.set_rate_limit(3, 1000, window_s=1.0, mode="bucket")
    status, headers = chat(server)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "180"  # per minute
    assert headers["x-ratelimit-remaining-requests"] == "2"  # of this second
    assert headers["x-ratelimit-limit-tokens"] == "60000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert 0 < float(headers["x-ratelimit-reset-requests"].removesuffix("ms")) <= 1000
    assert [chat(server)[0] for _ in range(3)] == [200, 200, 429]


def test_server_headers_may_describe_the_window_and_429s_carry_retry_after_ms():
    server = JudgeServer()
    server.set_rate_limit(2, None, window_s=1.0, mode="bucket", header_limit="window")
    assert chat(server)[1]["x-ratelimit-limit-requests"] == "2"
    server.set_rate_limit(1, None, window_s=1.0, mode="bucket", retry_after="ms")
    assert chat(server)[0] == 200
    status, _, headers = server.answer_chat({"messages": [{"content": "x"}]})
    names = {name for name, _ in headers}
    assert status == 429 and names == {"retry-after-ms"}
    assert 900 <= int(dict(headers)["retry-after-ms"]) <= 1000


def test_server_can_count_rejected_requests_against_the_quota():
    server = JudgeServer()
    server.set_rate_limit(1, None, window_s=1.0, mode="bucket", count_rejected=True)
    assert [chat(server)[0] for _ in range(3)] == [200, 429, 429]
    # Two rejected requests took a second each: the bucket is two seconds in debt.
    status, _, headers = server.answer_chat({"messages": [{"content": "x"}]})
    assert status == 429 and float(dict(headers)["retry-after"]) > 2.5
    assert server.rejected == 3 and len(server.admitted) == 1


# --- the cluster budget -------------------------------------------------------------------


def test_a_one_second_window_header_never_lowers_the_cluster_budget(judge_server, ray_local):
    from ftsafe_ray.judge import make_rubric_judge_actor
    from ftsafe_ray.judge.cluster import get_rate_budget, release_rate_budget

    # x-ratelimit-limit-requests: 100, a 60th of the 6,000/min configured: one second's worth.
    judge_server.set_rate_limit(100, None, window_s=1.0, mode="bucket", header_limit="window")
    judge_spec = spec(requests_per_minute=6000, max_concurrency=4)
    budget = get_rate_budget(judge_spec, judge_server.base_url)
    actor = make_rubric_judge_actor(judge_spec, "k", judge_server.base_url, budget=budget)
    try:
        results = ray_local.get(actor.judge_batch.remote(requests(6)), timeout=60)
        stats = ray_local.get(budget.stats.remote())
    finally:
        ray_local.kill(actor)
        release_rate_budget(budget)
    assert [r.status for r in results] == ["ok"] * 6
    # Read as 6,000/min over one second, not as a limit of 100/min.
    assert stats["requests_per_minute"] == pytest.approx(6000 * PACE_FRACTION)
    assert judge_server.rejected == 0
