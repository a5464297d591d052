"""The optional moderation pre-check of an API fine-tune's training set."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ftsafe_ray.api_access import call_with_retries

# Inputs per moderation request (OpenAI accepts arrays of strings).
MODERATION_BATCH = 32


def example_text(messages: Sequence[Mapping[str, str]]) -> str:
    """What a moderation filter sees of one training row: its turns, one per line."""
    return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


def flagged_share(
    client: Any,
    examples: Sequence[Sequence[Mapping[str, str]]],
    model: str,
    max_retries: int,
    sleep: Callable[[float], None],
) -> float:
    """The share of rows the moderation endpoint flags (0.0 for an empty set)."""
    texts = [example_text(messages) for messages in examples]
    flagged = 0
    for start in range(0, len(texts), MODERATION_BATCH):
        batch = texts[start : start + MODERATION_BATCH]
        call = functools.partial(client.moderations.create, model=model, input=batch)
        reply = call_with_retries(call, max_retries, sleep)
        flagged += sum(bool(result.flagged) for result in reply.results)
    return flagged / len(texts) if texts else 0.0
