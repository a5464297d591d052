"""Backend-neutral generation request and result records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """One chat to complete, on the base model (adapter_name None) or a LoRA adapter."""

    request_id: str
    messages: tuple[dict, ...] | list[dict]
    adapter_name: str | None = None
    adapter_path: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The completion of one request; finish_reason is 'stop' (end token) or 'length'."""

    request_id: str
    text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: FinishReason
    node: str | None = None  # the Ray node that generated it (set by the Generator actor)
