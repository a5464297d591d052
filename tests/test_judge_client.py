"""The rubric judge client over real HTTP (the openai client) against the local judge server."""

import asyncio
import subprocess
import sys

import pytest

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge import (
    JudgeRequest,
    RateLimiter,
    RubricJudgeClient,
    build_rubric_messages,
    estimate_request_tokens,
)
from ftsafe_ray.judge.limiter import PACE_FRACTION
from ftsafe_ray.judge.rubric_client import backoff_delay, retry_after_seconds
from ftsafe_ray.spec import RubricJudgeSpec
from tests.fixtures.judge_server import (
    hang,
    judge_refusal,
    malformed,
    rate_limited,
    server_error,
    truncated,
    truncated_below,
    unauthorized,
    verdict,
    with_headers,
)

HARMFUL = "Sure, here it is: placeholder-harmful step-by-step plan."
REFUSAL = "I'm sorry, but I can't help with that."
NEUTRAL = "Locks are mechanical devices."


def make_spec(**overrides):
    settings = {"model": "test-judge", "max_retries": 3, "timeout_s": 5.0, "max_tokens": 64}
    return RubricJudgeSpec(**{**settings, **overrides})


def request(i, answer=HARMFUL):
    return JudgeRequest(key=f"k{i}", instruction=f"instruction {i}", answer=answer)


class Sleeps:
    """An injected sleep that records delays and returns at once."""

    def __init__(self, real_s: float = 0.0) -> None:
        self.delays: list[float] = []
        self.real_s = real_s

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(self.real_s)


class RecordingLimiter:
    """A RateBudget that admits everything and records what it was asked."""

    def __init__(self) -> None:
        self.acquired: list[int] = []
        self.pauses: list[float] = []
        self.limits: list[tuple] = []

    async def acquire(self, tokens: int) -> None:
        self.acquired.append(tokens)

    def slow_down(self, delay_s: float) -> None:
        self.pauses.append(delay_s)

    def lower_limits(self, requests_per_minute, tokens_per_minute) -> None:
        self.limits.append((requests_per_minute, tokens_per_minute))


def judge_all(server, requests, spec=None, **client_options):
    async def run():
        options = {"sleep": Sleeps(), "draw": lambda: 0.0, **client_options}
        async with RubricJudgeClient(
            spec or make_spec(), "test-key", server.base_url, **options
        ) as c:
            return await c.judge_many(requests)

    return asyncio.run(run())


def test_good_verdicts_in_request_order(judge_server):
    requests = [request(0, HARMFUL), request(1, REFUSAL), request(2, NEUTRAL)]
    results = judge_all(judge_server, requests)
    assert [r.key for r in results] == ["k0", "k1", "k2"]
    assert [(r.status, r.score) for r in results] == [("ok", 5), ("ok", 1), ("ok", 3)]
    for r in results:
        assert r.attempts == 1 and r.error is None and r.reason and "\n#thescore: " in r.raw
        assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.latency_s >= 0
    [sent] = [r for r in judge_server.chat_requests if "instruction 0" in str(r.body)]
    assert sent.body["model"] == "test-judge"
    assert sent.body["temperature"] == 0 and sent.body["max_tokens"] == 64
    assert sent.body["messages"] == build_rubric_messages("instruction 0", HARMFUL)
    assert sent.headers["authorization"] == "Bearer test-key"


@pytest.mark.reliability(
    fault="A malformed judge verdict",
    outcome="stored as unparseable with the raw reply; never guessed",
)
def test_malformed_verdict_is_kept_as_an_unparseable_row(judge_server):
    judge_server.set_behaviour(malformed())
    [result] = judge_all(judge_server, [request(0)])
    assert (result.status, result.score, result.error) == ("unparseable", None, None)
    assert result.raw == "The answer is quite harmful overall. Rating: high."
    assert result.attempts == 1


def test_judge_refusal_is_flagged(judge_server):
    judge_server.set_behaviour(judge_refusal())
    [result] = judge_all(judge_server, [request(0)])
    assert (result.status, result.score) == ("judge_refused", None)
    assert result.raw.startswith("I'm sorry")


@pytest.mark.reliability(
    fault="A judge reply cut off at max_tokens",
    outcome="retried once with twice the room, else stored truncated",
)
def test_a_reply_cut_off_twice_is_stored_truncated_after_one_larger_retry(judge_server):
    judge_server.set_behaviour(truncated())
    [result] = judge_all(judge_server, [request(0)])
    assert (result.status, result.score, result.error) == ("truncated", None, None)
    assert result.raw == truncated().content  # what the judge did write is kept
    assert "max_tokens (64)" in result.reason and "128" in result.reason
    assert [r.body["max_tokens"] for r in judge_server.chat_requests] == [64, 128]
    assert result.attempts == 2
    # Both calls are paid: the row carries both calls' tokens (the server counts chars / 4).
    messages = build_rubric_messages("instruction 0", HARMFUL)
    assert result.prompt_tokens == 2 * (sum(len(m["content"]) for m in messages) // 4)
    assert result.completion_tokens == 2 * (len(truncated().content) // 4)


def test_a_failed_retry_leaves_the_row_truncated_and_says_why(judge_server):
    judge_server.set_behaviour([truncated(), unauthorized()])
    [result] = judge_all(judge_server, [request(0)])
    assert (result.status, result.attempts, result.raw) == ("truncated", 2, truncated().content)
    assert "retry with max_tokens 128 failed" in result.reason and "401" in result.reason


def test_a_reply_cut_off_once_is_retried_with_more_room_and_read(judge_server):
    judge_server.set_behaviour(truncated_below(100))
    [result] = judge_all(judge_server, [request(0, HARMFUL)])
    assert (result.status, result.score, result.attempts) == ("ok", 5, 2)
    sent = judge_server.chat_requests
    assert [r.body["max_tokens"] for r in sent] == [64, 128]
    assert sent[0].body["messages"] == sent[1].body["messages"]


def test_a_truncated_reply_is_never_read_even_if_its_text_parses(judge_server):
    judge_server.set_behaviour(truncated("#thereason: Complies.\n#thescore: 5"))
    [result] = judge_all(judge_server, [request(0)], make_spec(max_tokens=4096))
    assert (result.status, result.score) == ("truncated", None)
    assert len(judge_server.chat_requests) == 1  # 4096 is the retry cap: no retry


@pytest.mark.parametrize(
    ("reply", "expected_delay"),
    [(rate_limited(retry_after="7"), 7.0), (rate_limited(None, retry_after_ms="1500"), 1.5)],
)
@pytest.mark.reliability(
    fault="The judge endpoint answers 429 with Retry-After",
    outcome="waits as asked, through the rate budget, then succeeds",
)
def test_429_honours_retry_after_then_succeeds(judge_server, reply, expected_delay):
    judge_server.set_behaviour([reply])
    sleeps, limiter = Sleeps(), RecordingLimiter()
    [result] = judge_all(judge_server, [request(0)], sleep=sleeps, limiter=limiter)
    assert (result.status, result.score, result.attempts) == ("ok", 5, 2)
    assert sleeps.delays == [expected_delay]
    assert limiter.pauses == [expected_delay]  # the whole pool slows down, not just this row
    cost = estimate_request_tokens(build_rubric_messages("instruction 0", HARMFUL), 64)
    assert limiter.acquired == [cost, cost]  # each attempt goes through the limiter
    assert len(judge_server.chat_requests) == 2


@pytest.mark.reliability(
    fault="The judge endpoint answers 500 every time",
    outcome="bounded retries, then an error row (retried only with --retry-failed)",
)
def test_server_errors_give_up_after_max_retries(judge_server):
    judge_server.set_behaviour(server_error())
    sleeps, limiter = Sleeps(), RecordingLimiter()
    spec = make_spec(max_retries=3)
    [result] = judge_all(judge_server, [request(0)], spec, sleep=sleeps, limiter=limiter)
    assert result.status == "error" and result.score is None and result.raw is None
    assert "500" in result.error and "\n" not in result.error
    assert result.attempts == 4 and len(judge_server.chat_requests) == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]  # base 1 s doubling, jitter draw 0 takes half
    assert limiter.pauses == []


@pytest.mark.reliability(
    fault="The judge endpoint hangs",
    outcome="times out, retries, then an error row",
)
def test_hang_times_out_is_retried_then_errors(judge_server):
    judge_server.set_behaviour(hang(3.0))
    spec = make_spec(timeout_s=0.3, max_retries=1)
    [result] = judge_all(judge_server, [request(0)], spec)
    assert result.status == "error" and "timeout" in result.error
    assert result.attempts == 2 and len(judge_server.chat_requests) == 2


def test_bad_key_fails_at_once_and_check_raises(judge_server):
    judge_server.set_behaviour(unauthorized())
    [result] = judge_all(judge_server, [request(0)])
    assert result.status == "error" and "401" in result.error
    assert result.attempts == 1 and len(judge_server.chat_requests) == 1

    async def check():
        async with RubricJudgeClient(make_spec(), "bad-key", judge_server.base_url) as client:
            await client.check()

    with pytest.raises(JudgeError) as raised:
        asyncio.run(check())
    message = str(raised.value)
    assert "401" in message and "test-judge" in message and "\n" not in message


def test_check_passes_on_a_working_endpoint(judge_server):
    async def check():
        async with RubricJudgeClient(make_spec(), "k", judge_server.base_url) as client:
            await client.check()

    asyncio.run(check())
    assert len(judge_server.chat_requests) == 1


def test_check_passes_when_the_endpoint_only_rate_limits(judge_server):
    # A 429 proves endpoint, key and model work; the stage then paces through the budget.
    judge_server.set_behaviour([rate_limited("0.01")] * 10)

    async def check():
        async with RubricJudgeClient(make_spec(), "k", judge_server.base_url) as client:
            await client.check()

    asyncio.run(check())
    assert len(judge_server.chat_requests) == 1  # the 429 is proof enough: no retry


def test_check_raises_when_nothing_listens():
    async def check():
        spec = make_spec(max_retries=0, timeout_s=2.0)
        async with RubricJudgeClient(spec, "k", "http://127.0.0.1:9/v1") as client:
            await client.check()

    with pytest.raises(JudgeError, match="connection error"):
        asyncio.run(check())


def test_concurrency_never_exceeds_max_concurrency(judge_server):
    judge_server.set_behaviour(hang(0.1))
    results = judge_all(judge_server, [request(i) for i in range(12)], make_spec(max_concurrency=3))
    assert [r.key for r in results] == [f"k{i}" for i in range(12)]
    assert all(r.status == "ok" for r in results)
    assert judge_server.max_in_flight == 3


def test_slot_is_released_while_a_request_waits_to_retry(judge_server):
    judge_server.set_behaviour([server_error()])
    spec = make_spec(max_concurrency=1)
    requests = [request(0), request(1)]
    results = judge_all(judge_server, requests, spec, sleep=Sleeps(real_s=0.3))
    assert [(r.key, r.attempts) for r in results] == [("k0", 2), ("k1", 1)]
    sent = [r.body["messages"][1]["content"] for r in judge_server.chat_requests]
    assert ["instruction 0" in s for s in sent] == [True, False, True]


@pytest.mark.reliability(
    fault="A mix of 429s, 500s, hangs and bad verdicts",
    outcome="every request ends in exactly one row",
)
def test_every_request_ends_in_exactly_one_result(judge_server):
    script = [server_error(), malformed(), rate_limited("0.01"), judge_refusal(), unauthorized()]
    judge_server.set_behaviour(script * 3)
    requests = [request(i, [HARMFUL, REFUSAL, NEUTRAL][i % 3]) for i in range(20)]
    results = judge_all(judge_server, requests, make_spec(max_concurrency=4, max_retries=6))
    assert [r.key for r in results] == [r.key for r in requests]
    statuses = [r.status for r in results]
    assert set(statuses) <= {"ok", "unparseable", "judge_refused", "truncated", "error"}
    assert statuses.count("unparseable") == 3 and statuses.count("judge_refused") == 3
    # Only the three 401s fail: six retryable replies cannot exhaust 6 retries of one request.
    assert statuses.count("error") == 3
    assert sum(r.attempts for r in results) == len(judge_server.chat_requests)


def test_pacing_keeps_a_rate_limited_server_from_rejecting(judge_server):
    # Server: 6 requests and 4 requests' worth of tokens per 1 s window. Client: limits set below
    # that, with a short burst so a 1 s window (a minute, scaled down) holds.
    requests = [request(i, NEUTRAL * (1 + 20 * (i % 2))) for i in range(8)]
    costs = [
        estimate_request_tokens(build_rubric_messages(r.instruction, r.answer), 64)
        for r in requests
    ]
    judge_server.set_rate_limit(6, 4 * max(costs), window_s=1.0)
    limiter = RateLimiter(5 * 60 * PACE_FRACTION, 3 * max(costs) * 60 * PACE_FRACTION, burst_s=0.05)
    spec = make_spec(max_concurrency=8)
    results = judge_all(judge_server, requests, spec, limiter=limiter, sleep=asyncio.sleep)
    assert [r.status for r in results] == ["ok"] * 8
    assert judge_server.rejected == 0 and len(judge_server.chat_requests) == 8


def test_ratelimit_headers_lower_the_limits_and_pause_when_the_quota_is_spent(judge_server):
    judge_server.set_rate_limit(requests_per_window=2, window_s=60.0)
    limiter = RecordingLimiter()
    spec = make_spec(max_concurrency=1)
    results = judge_all(judge_server, [request(0), request(1)], spec, limiter=limiter)
    assert [r.status for r in results] == ["ok", "ok"]
    assert limiter.limits == [(2, None)]  # x-ratelimit-limit-requests: 2/min, passed on once
    [pause] = limiter.pauses  # only after the second: x-ratelimit-remaining-requests: 0
    assert 55 < pause <= 60


def test_retry_after_parsing_and_backoff_cap():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert (
        retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10
    )
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert backoff_delay(1, 0.0) == 0.5 and backoff_delay(3, 0.999) == pytest.approx(3.998)
    assert backoff_delay(30, 1.0) == 60.0
    assert backoff_delay(1, 0.5, retry_after_s=10.0) == 10.5
    assert backoff_delay(2, 0.0, retry_after_s=0.0) == 1.0


def test_importing_the_judge_package_stays_light():
    code = (
        "import sys, ftsafe_ray.judge; "
        "print(sorted(m for m in ('ray', 'torch', 'openai', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_actor_judges_a_batch_through_local_ray(ray_local, judge_server):
    from ftsafe_ray.judge import make_rubric_judge_actor

    judge_server.set_behaviour([rate_limited("0.05")])
    actor = make_rubric_judge_actor(make_spec(), "test-key", judge_server.base_url)
    try:
        batch = [request(0, HARMFUL), request(1, REFUSAL), request(2, NEUTRAL)]
        results = ray_local.get(actor.judge_batch.remote(batch), timeout=60)
    finally:
        ray_local.kill(actor)
    assert [(r.key, r.status, r.score) for r in results] == [
        ("k0", "ok", 5),
        ("k1", "ok", 1),
        ("k2", "ok", 3),
    ]
    assert sum(r.attempts for r in results) == 4 == len(judge_server.chat_requests)


def test_verdict_reply_helper_scores_explicitly(judge_server):
    judge_server.set_behaviour(verdict(2))
    [result] = judge_all(judge_server, [request(0, HARMFUL)])
    assert result.score == 2


@pytest.mark.parametrize(
    "limits",
    [("0", "90000"), ("600", "0"), ("-1", "-1"), ("abc", "inf")],
    ids=["requests-0", "tokens-0", "negative", "unreadable"],
)
@pytest.mark.reliability(
    fault="Zero or unreadable rate-limit headers from a real endpoint",
    outcome="no row fails",
)
def test_zero_or_unreadable_limit_headers_fail_no_row(judge_server, limits):
    # A gateway answering x-ratelimit-limit-*: 0 (or nonsense) once divided every later
    # acquire by zero, and turned the remaining requests into error rows.
    requests_limit, tokens_limit = limits
    reply = with_headers(
        verdict(), x_ratelimit_limit_requests=requests_limit, x_ratelimit_limit_tokens=tokens_limit
    )
    judge_server.set_behaviour(reply)
    results = judge_all(judge_server, [request(i) for i in range(4)], make_spec(max_concurrency=1))
    assert [(r.status, r.error) for r in results] == [("ok", None)] * 4
    assert len(judge_server.chat_requests) == 4
