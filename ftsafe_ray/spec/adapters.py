"""Spec of adapters trained elsewhere: evaluated as they are, never trained by the campaign."""

from __future__ import annotations

from pydantic import Field

from ftsafe_ray.spec.common import NAME_PATTERN, Strict


class TrainedAdapterSpec(Strict):
    """A LoRA adapter directory (adapter_config.json + weights) taken as already trained.

    Its content key hashes the adapter's files and the base model's identity, so the same
    files on the same base reuse every stored answer and verdict, and changed files do not.
    """

    name: str = Field(pattern=NAME_PATTERN, description="Arm name used in tables.")
    path: str = Field(description="The adapter directory (relative to the campaign file).")
    model: str | None = Field(
        None, description="Name of the base model it was trained on (default: every model)."
    )
    system_prompt: str | None = Field(
        None, description="System prompt to evaluate it with (default: the campaign's)."
    )
