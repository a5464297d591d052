"""Chat examples to (input_ids, labels) with loss only on assistant turns, via the chat template."""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat and return it with the character spans of each assistant reply + end token."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        content = message.get("content") or ""
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else None
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if prompt is not None and upto.startswith(prompt) and full.startswith(upto):
            start, end = len(prompt), len(upto)
        else:
            # templates that rewrite earlier turns or inject defaults: find the reply text itself
            start = full.find(content, cursor)
            if start < 0:
                raise ValueError(f"assistant message {i} not found in the rendered chat template")
            end = len(full)
        # stop after the end-of-turn token: whitespace the template adds after it is not trained
        stop = full.find(eos, start) if eos else -1
        if 0 <= stop < end:
            end = stop + len(eos)
        spans.append((start, end))
        cursor = end
    return full, spans


def tokenize_chat_for_training(
    tokenizer: Any, messages: list[dict], max_length: int
) -> tuple[list[int], list[int]]:
    """Return input_ids and labels (-100 outside assistant replies), truncated to max_length."""
    text, spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (token_start, token_end) in enumerate(encoded["offset_mapping"]):
        if token_end <= token_start:
            continue
        if any(start <= token_start < end for start, end in spans):
            labels[position] = input_ids[position]
    return input_ids[:max_length], labels[:max_length]
