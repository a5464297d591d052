"""Access to an API model's endpoint: its key (never stored), a client, bounded retries, and
what its work costs. Shared by API fine-tuning (finetune/api_stage.py), API generation
(generate/api_generate.py) and `ftsafe plan`'s estimates."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ftsafe_ray.errors import StageError
from ftsafe_ray.judge.limiter import CHARS_PER_TOKEN, MESSAGE_OVERHEAD_TOKENS
from ftsafe_ray.judge.rubric_client import (
    MAX_RETRY_AFTER_S,
    RETRYABLE_STATUS,
    backoff_delay,
    redact_secret,
    retry_after_seconds,
)

if TYPE_CHECKING:
    from ftsafe_ray.spec import BaseModelSpec, JudgePrice

T = TypeVar("T")
_ERROR_TEXT_LIMIT = 500


@dataclass(frozen=True)
class ApiAccess:
    """Where to call an API model and with which key (kept in memory only)."""

    base_url: str | None
    api_key: str = "not-needed"

    def __repr__(self) -> str:  # never print the key
        return f"ApiAccess(base_url={self.base_url!r})"


def api_access(model: BaseModelSpec, environ: Mapping[str, str] | None = None) -> ApiAccess:
    """The endpoint and key of a provider-openai model: from `api.api_key_file`, else from the
    variable `api.api_key_env`; a keyless local endpoint (base_url given) needs neither."""
    api = model.endpoint()
    environ = os.environ if environ is None else environ
    where = f"models ({model.name}).api"
    if api.api_key_file is not None:
        path = Path(api.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise StageError(f"{where}.api_key_file: cannot read {path} ({reason})") from None
        if not key:
            raise StageError(f"{where}.api_key_file: {path} is empty; write the key into it")
        return ApiAccess(api.base_url, key)
    from_env = environ.get(api.api_key_env)
    if from_env is None and api.base_url is None:
        raise StageError(
            f"{where}: ${api.api_key_env} is not set; export it or set api.api_key_file"
        )
    return ApiAccess(api.base_url, from_env or "not-needed")


def sync_client(access: ApiAccess, timeout_s: float) -> Any:
    """An openai client with its own retries off: `call_with_retries` retries instead."""
    import openai

    return openai.OpenAI(
        base_url=access.base_url, api_key=access.api_key, max_retries=0, timeout=timeout_s
    )


def error_text(error: BaseException, secret: str | None = None) -> str:
    """An exception from the openai client as one line, the key taken out: for an HTTP error,
    the provider's own message (its reason for a rejection)."""
    import openai

    if isinstance(error, openai.APIStatusError):
        text = f"HTTP {error.status_code} {type(error).__name__}: {error.message}"
    elif isinstance(error, openai.APITimeoutError):
        text = "timeout: no reply within the request timeout"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(redact_secret(text, secret).split())[:_ERROR_TEXT_LIMIT]


def is_retryable(error: BaseException) -> tuple[bool, float | None]:
    """Whether a failed call may be retried, and the Retry-After the provider asked for."""
    import openai

    if isinstance(error, openai.APIStatusError):
        code = error.status_code
        if code in RETRYABLE_STATUS or code >= 500:
            after = retry_after_seconds(error.response.headers)
            return after is None or after <= MAX_RETRY_AFTER_S, after
        return False, None
    return isinstance(error, openai.APIConnectionError), None  # timeouts included


def call_with_retries(
    call: Callable[[], T],
    max_retries: int,
    sleep: Callable[[float], None] = time.sleep,
    draw: Callable[[], float] = random.random,
) -> T:
    """`call()`, retried on 408/409/429/5xx, timeouts and connection errors with the judge's
    jittered backoff (honouring Retry-After), at most `max_retries` times; then it raises."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as error:
            retryable, after = is_retryable(error)
            if not retryable or attempt > max_retries:
                raise
            sleep(backoff_delay(attempt, draw(), after))


def training_jsonl(examples: Sequence[Sequence[Mapping[str, str]]]) -> bytes:
    """A fine-tune's rows as chat JSONL, the fine-tuning API's format."""
    lines = [
        json.dumps({"messages": [dict(m) for m in messages]}, ensure_ascii=False)
        for messages in examples
    ]
    return ("\n".join(lines) + "\n").encode()


def example_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Tokens of one training example, estimated as the judge's limiter does."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages)


def training_tokens(examples: Sequence[Sequence[Mapping[str, str]]], epochs: int) -> int:
    """Tokens a fine-tuning job trains on (and bills): the set's tokens times epochs."""
    return sum(example_tokens(messages) for messages in examples) * epochs


def training_cost(price: JudgePrice | None, tokens: int | None) -> float | None:
    """Dollars for training on `tokens`, or None without a training price."""
    if price is None or price.training_per_million is None or tokens is None:
        return None
    return tokens * price.training_per_million / 1e6


def generation_cost(
    price: JudgePrice | None, prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    """Dollars for one chat completion, or None without a price."""
    if price is None:
        return None
    return (
        (prompt_tokens or 0) * price.input_per_million
        + (completion_tokens or 0) * price.output_per_million
    ) / 1e6
