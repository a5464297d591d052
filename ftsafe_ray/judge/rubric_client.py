"""Async client rating (instruction, answer) pairs with a rubric at an OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.limiter import (
    Clock,
    RateBudget,
    RateLimiter,
    Sleep,
    TokenCount,
    header_pause,
    paced,
    read_ratelimit_headers,
)
from ftsafe_ray.judge.rubrics import Rubric, get_rubric, parse_reply, rubric_failure
from ftsafe_ray.judge.verdict import ParsedVerdict

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

ResultStatus = Literal["ok", "unparseable", "judge_refused", "truncated", "error"]

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
# A longer Retry-After means a quota is spent for a long while: fail the row, do not block.
MAX_RETRY_AFTER_S = 300.0
RETRYABLE_STATUS = frozenset({408, 409, 429})
_ERROR_TEXT_LIMIT = 500
# check() is a preflight: report an unreachable endpoint within seconds, not minutes.
CHECK_MAX_RETRIES = 2
# A reply cut off at max_tokens is asked again once with this many times the room, up to the
# cap: enough for a judge that reasoned at length, bounded so one row cannot cost much more.
TRUNCATION_RETRY_FACTOR = 2
TRUNCATION_RETRY_CAP = 4096


@dataclass(frozen=True)
class JudgeRequest:
    """One (instruction, answer) pair to rate; `key` identifies its verdict row."""

    key: str
    instruction: str
    answer: str
    # A built-in rubric to rate this pair with instead of the client's own: utility answers
    # share the pool, and its limiter, with the harmful rubric.
    rubric: str | None = None


@dataclass(frozen=True)
class JudgeResult:
    """The outcome of one request: a verdict, a flagged unparseable/refused reply, or an error."""

    key: str
    status: ResultStatus
    score: int | None
    reason: str | None
    raw: str | None
    error: str | None
    attempts: int
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    refused: bool | None = None
    convincing: int | None = None
    specific: int | None = None
    strongreject_score: float | None = None


@dataclass(frozen=True)
class _Failure:
    message: str
    retryable: bool
    rate_limited: bool = False
    retry_after_s: float | None = None


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by `retry-after-ms` or `Retry-After` (seconds or HTTP date), or None."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def backoff_delay(retry: int, draw: float, retry_after_s: float | None = None) -> float:
    """Delay before retry number `retry` (1-based): Retry-After if given, else capped exponential.

    `draw` in [0, 1) adds jitter: up to 10% on top of Retry-After, or half the exponential step.
    """
    if retry_after_s:  # a zero Retry-After would mean hammering the endpoint: back off instead
        return retry_after_s * (1.0 + 0.1 * draw)
    step = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (retry - 1))
    return step * (0.5 + 0.5 * draw)


REDACTED = "[api key redacted]"
# A key short enough to occur by chance in an error text (the "not-needed" placeholder of a
# keyless local endpoint, a test's "x") is not worth hiding and would garble messages.
_MIN_SECRET_LENGTH = 8


def redact_secret(text: str, secret: str | None) -> str:
    """`text` without the API key: neither verbatim nor as a provider's masked echo of it.

    An endpoint may quote the key it was sent in its error body (OpenAI answers a 401 with
    "Incorrect API key provided: sk-ab***...wxyz"), and the openai client puts that body in
    its exception text; from there it would reach judgments.error, logs and one-line errors.
    The masked echo still gives away the key's ends, so a masked token ending in the key's
    last four characters goes too.
    """
    if not secret or len(secret) < _MIN_SECRET_LENGTH:
        return text
    text = text.replace(secret, REDACTED)
    masked = re.compile(r"[^\s'\"]*\*{4,}[^\s'\"]*?" + re.escape(secret[-4:]))
    return masked.sub(REDACTED, text)


def _one_line(text: str, secret: str | None = None) -> str:
    """An error text on one line, cut to a length; the key is taken out before the cut, so a
    key straddling the limit cannot survive as a fragment."""
    return " ".join(redact_secret(text, secret).split())[:_ERROR_TEXT_LIMIT]


def _classify(error: Exception, secret: str | None = None) -> _Failure:
    """Map an exception from the openai client to a retry decision; `secret` (the API key)
    never appears in the failure's message."""
    import openai

    if isinstance(error, openai.APIStatusError):
        code = error.status_code
        text = _one_line(f"HTTP {code} {type(error).__name__}: {error.message}", secret)
        retryable = code in RETRYABLE_STATUS or code >= 500
        after = retry_after_seconds(error.response.headers) if retryable else None
        if after is not None and after > MAX_RETRY_AFTER_S:
            text = f"{text} (Retry-After {after:.0f}s exceeds {MAX_RETRY_AFTER_S:.0f}s)"
            return _Failure(text, retryable=False)
        return _Failure(text, retryable, rate_limited=code == 429, retry_after_s=after)
    if isinstance(error, openai.APITimeoutError):
        return _Failure("timeout: no reply within the request timeout", retryable=True)
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return _Failure(_one_line(f"connection error: {cause!r}", secret), retryable=True)
    return _Failure(_one_line(f"{type(error).__name__}: {error}", secret), retryable=False)


def truncation_retry_max_tokens(max_tokens: int) -> int | None:
    """max_tokens for the one retry of a reply cut off at `max_tokens`; None: no retry."""
    larger = min(max_tokens * TRUNCATION_RETRY_FACTOR, max(TRUNCATION_RETRY_CAP, max_tokens))
    return larger if larger > max_tokens else None


def is_truncated(completion: Any) -> bool:
    """The judge stopped at max_tokens: what it wrote is not its whole verdict."""
    return bool(completion.choices) and completion.choices[0].finish_reason == "length"


def result_from_completion(
    key: str,
    completion: Any,
    rubric: Rubric,
    attempts: int,
    latency_s: float,
    max_tokens: int | None = None,
) -> JudgeResult:
    """A parsed verdict row from a chat.completion (a live reply or a Batch API output line).

    A reply cut off at max_tokens is 'truncated' (raw kept, no score) even if its cut text
    would parse: the judge may have been about to write another, different score tag.
    """
    message = completion.choices[0].message if completion.choices else None
    content = message.content if message else None
    refusal = getattr(message, "refusal", None)
    if is_truncated(completion):
        limit = f" ({max_tokens})" if max_tokens is not None else ""
        reason = f"judge reply cut off at max_tokens{limit}"
        raw, verdict = content or refusal or "", ParsedVerdict("truncated", None, reason)
    elif not content and refusal:
        raw, verdict = refusal, ParsedVerdict("judge_refused", None, refusal)
    else:
        raw = content or ""
        verdict = parse_reply(rubric, raw)
    usage = completion.usage
    return JudgeResult(
        key=key, status=verdict.status, score=verdict.score, reason=verdict.reason,
        raw=raw, error=None, attempts=attempts,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None, latency_s=latency_s,
        refused=verdict.refused, convincing=verdict.convincing, specific=verdict.specific,
        strongreject_score=verdict.strongreject_score,
    )  # fmt: skip


def _add(a: int | None, b: int | None) -> int | None:
    """Token counts of two calls; None only when neither reported usage."""
    return None if a is None and b is None else (a or 0) + (b or 0)


def error_result(key: str, message: str, attempts: int, latency_s: float) -> JudgeResult:
    """The row of a request that failed for good."""
    return JudgeResult(
        key=key, status="error", score=None, reason=None, raw=None, error=message,
        attempts=attempts, prompt_tokens=None, completion_tokens=None, latency_s=latency_s,
    )  # fmt: skip


class RubricJudgeClient:
    """Rates pairs with a judge model; retries through the limiter and never raises for a row.

    Use it within one event loop. The openai client's own retries are off because they would
    bypass the limiter; this class retries 408/409/429/5xx, timeouts and connection errors.
    """

    def __init__(
        self,
        spec: RubricJudgeSpec,
        api_key: str,
        base_url: str | None,
        *,
        limiter: RateBudget | None = None,
        rate_share: float = 1.0,
        rubric: Rubric | None = None,
        sleep: Sleep = asyncio.sleep,
        draw: Callable[[], float] = random.random,
        clock: Clock = time.monotonic,
    ) -> None:
        import openai

        self.spec = spec
        self.rubric = rubric or get_rubric(spec.rubric)
        self._api_key = api_key  # only to redact it from error texts (see redact_secret)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, max_retries=0, timeout=spec.timeout_s
        )
        self._limiter = limiter or RateLimiter(
            paced(spec.requests_per_minute, rate_share),
            paced(spec.tokens_per_minute, rate_share),
            clock=clock,
            sleep=sleep,
        )
        self._slots = asyncio.Semaphore(spec.max_concurrency)
        self._sleep = sleep
        self._draw = draw
        self._clock = clock
        self._reported_limits: tuple[int | None, int | None] = (None, None)
        self._tokens = TokenCount()
        # When the latest-sent request that the provider admitted was sent: headers of a
        # request sent before it describe a quota that has had room since (see header_pause).
        self._admitted_sent_at = -math.inf

    async def _complete(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        max_retries: int,
        retry_429: bool = True,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[Any, _Failure | None, int]:
        """Call the endpoint with retries; return (completion or None, last failure, attempts).

        Without `retry_429`, a 429 ends the call at once (the pool still slows down for it).
        `model` and `params` (sampling settings) replace the judge's model and temperature 0.
        """
        attempts = 0
        while True:
            attempts += 1
            cost = self._tokens.cost(messages, max_tokens)
            async with self._slots:
                await self._limiter.acquire(cost)
                sent_at = self._clock()
                try:
                    raw = await self._client.chat.completions.with_raw_response.create(
                        model=model or self.spec.model,
                        messages=messages,  # type: ignore[arg-type]
                        max_tokens=max_tokens,
                        **({"temperature": 0} if params is None else params),
                    )
                    completion = raw.parse()
                except Exception as error:  # every failure becomes a row, see _classify
                    failure = _classify(error, self._api_key)
                else:
                    usage = getattr(completion, "usage", None)
                    self._tokens.observe(messages, getattr(usage, "prompt_tokens", None))
                    self._adapt(raw.headers, self._tokens.cost(messages, max_tokens), sent_at)
                    return completion, None, attempts
            # The slot is released here, so others proceed while this request waits to retry.
            stop = not failure.retryable or attempts > max_retries
            delay = backoff_delay(attempts, self._draw(), failure.retry_after_s)
            if failure.rate_limited:
                # A real 429: the whole pool holds back for its Retry-After, retried or not.
                self._limiter.slow_down(delay)
                stop = stop or not retry_429
            if stop:
                return None, failure, attempts
            await self._sleep(delay)

    def _adapt(self, headers: Mapping[str, str], cost: int, sent_at: float) -> None:
        """Learn from the provider's `x-ratelimit-*` headers of a request sent at `sent_at`.

        They are information, not a command to stop everyone: a lower limit they report
        lowers the pace (read per minute whatever window they describe), and they pause the
        pool only for a quota spent for long (see header_pause). A 429 slows it down anyway.
        """
        configured = (self.spec.requests_per_minute, self.spec.tokens_per_minute)
        hint = read_ratelimit_headers(headers, cost, configured)
        limits = (hint.requests_per_minute, hint.tokens_per_minute)
        if any(limits) and limits != self._reported_limits:
            # Only on a change: with a cluster budget each call is a message to its actor.
            self._reported_limits = limits
            self._limiter.lower_limits(*limits)
        superseded = self._admitted_sent_at > sent_at
        self._admitted_sent_at = max(self._admitted_sent_at, sent_at)
        pause = header_pause(hint, sent_at, self._clock(), superseded)
        if pause is not None:
            self._limiter.slow_down(pause)

    async def complete(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        *,
        model: str,
        params: Mapping[str, Any],
    ) -> tuple[Any, str | None, int]:
        """One chat completion of `model` through the limiter and retries, for callers other
        than the judge (API generation): (completion or None, why it failed, attempts)."""
        try:
            completion, failure, attempts = await self._complete(
                messages, max_tokens, self.spec.max_retries, model=model, params=params
            )
        except Exception as error:  # as in judge(): the caller's row must come back
            return None, _one_line(repr(error), self._api_key), 0
        return completion, None if failure is None else failure.message, attempts

    async def judge(self, request: JudgeRequest) -> JudgeResult:
        """Rate one pair; every request ends in exactly one result, errors included."""
        started = self._clock()
        try:
            rubric = self.rubric if request.rubric is None else get_rubric(request.rubric)
            messages = rubric.build_messages(request.instruction, request.answer)
        except Exception as error:  # a custom rubric's bug fails this row, unpaid; not the batch
            message = rubric_failure("build_messages", error)
            return error_result(request.key, message, 0, self._clock() - started)
        try:
            completion, failure, attempts = await self._complete(
                messages, self.spec.max_tokens, self.spec.max_retries
            )
        except Exception as error:  # a bug or limiter failure must still yield this row
            failure = _Failure(_one_line(repr(error), self._api_key), False)
            completion, attempts = None, 0
        latency = self._clock() - started
        if completion is None:
            assert failure is not None
            return error_result(request.key, failure.message, attempts, latency)
        result = result_from_completion(
            request.key, completion, rubric, attempts, latency, self.spec.max_tokens
        )
        if result.status == "truncated":
            result = await self._retry_truncated(request, messages, result, started, rubric)
        return result

    async def _retry_truncated(
        self,
        request: JudgeRequest,
        messages: list[dict[str, str]],
        first: JudgeResult,
        started: float,
        rubric: Rubric,
    ) -> JudgeResult:
        """Ask once more with more room; the verdict key still names spec.max_tokens.

        Both calls are paid, so the row carries the sum of their attempts and tokens. If the
        retry fails or is cut off too, the row stays 'truncated' (a final, flagged status).
        """
        larger = truncation_retry_max_tokens(self.spec.max_tokens)
        if larger is None:
            return first
        try:
            completion, failure, attempts = await self._complete(
                messages, larger, self.spec.max_retries
            )
        except Exception as error:  # as in judge(): a row must come back whatever happens
            failure = _Failure(_one_line(repr(error), self._api_key), False)
            completion, attempts = None, 0
        latency = self._clock() - started
        if completion is None:
            assert failure is not None
            reason = f"{first.reason}; the retry with max_tokens {larger} failed: {failure.message}"
            return replace(
                first, reason=reason, attempts=first.attempts + attempts, latency_s=latency
            )
        second = result_from_completion(
            request.key, completion, rubric, first.attempts + attempts, latency, larger
        )
        if second.status == "truncated":
            reason = f"{first.reason}, and again at {larger} on the retry"
            second = replace(second, reason=reason)
        return replace(
            second,
            prompt_tokens=_add(first.prompt_tokens, second.prompt_tokens),
            completion_tokens=_add(first.completion_tokens, second.completion_tokens),
        )

    async def judge_many(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """Rate many pairs concurrently (at most `max_concurrency` in flight), in input order."""
        return list(await asyncio.gather(*(self.judge(r) for r in requests)))

    async def check(self) -> None:
        """Make one cheap call; raise JudgeError in one line if the endpoint, key or model fails."""
        messages = [{"role": "user", "content": "Reply with the word OK."}]
        try:
            retries = min(self.spec.max_retries, CHECK_MAX_RETRIES)
            completion, failure, _ = await self._complete(messages, 5, retries, retry_429=False)
        except Exception as error:
            detail = _one_line(repr(error), self._api_key)
            raise JudgeError(f"judge check failed: {detail}") from None
        if completion is None:
            assert failure is not None
            if failure.rate_limited:
                # A 429 proves the endpoint, key and model answer, with no retry (the stage's
                # first batches go out beside the check): the pool paces and retries through
                # the budget, so a rate-limit storm must not stop the whole stage.
                return
            where = redact_secret(str(self._client.base_url), self._api_key)
            raise JudgeError(
                f"judge model {self.spec.model!r} at {where} is unusable: {failure.message}"
            )

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def __aenter__(self) -> RubricJudgeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
