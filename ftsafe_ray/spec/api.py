"""Spec of models served behind an OpenAI-compatible API: the endpoint, its limits and budget,
and the hyperparameters its fine-tuning API accepts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator

from ftsafe_ray.spec.common import Strict, absolute_key_file

OPENAI_BASE_URL = "https://api.openai.com/v1"
# TrainSpec fields the fine-tuning API has a knob for (n_epochs); the rest are local-only.
API_TRAIN_FIELDS = frozenset({"epochs"})


class ApiEndpointSpec(Strict):
    """Where an API model lives and how hard it may be driven (fine-tuning and generation)."""

    base_url: str | None = Field(None, description="OpenAI-compatible base URL; None = OpenAI.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable with the key.")
    api_key_file: str | None = Field(
        None,
        description="Absolute path of a file holding the key, read on the driver's node instead "
        "of api_key_env (keeps the key out of a Ray job's runtime env).",
    )
    requests_per_minute: int | None = Field(
        None, ge=1, description="Generation: provider limit, enforced across the cluster."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Generation: provider limit (prompt + max tokens), cluster-wide."
    )
    max_concurrency: int = Field(8, ge=1, le=1024, description="Generation requests in flight.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries per request before 'error'.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    poll_s: float = Field(
        15.0, gt=0, description="First wait between fine-tuning job polls (grows to poll_max_s)."
    )
    poll_max_s: float = Field(300.0, gt=0, description="Longest wait between job polls.")
    max_concurrent_jobs: int = Field(
        4, ge=1, le=64, description="Fine-tuning jobs this campaign runs at once."
    )
    moderation: bool = Field(
        False,
        description="Before uploading, send each training set through the moderation endpoint "
        "and record (and log) the share of rows flagged.",
    )
    moderation_model: str = Field("omni-moderation-latest", description="Moderation model.")
    budget_usd: float | None = Field(
        None,
        gt=0,
        description="Stop new fine-tuning jobs and generation requests of this model once its "
        "API spend in this campaign (both) would pass this; needs judges.prices.<path>.",
    )

    _absolute_key_file = field_validator("api_key_file")(absolute_key_file)

    def host(self) -> str:
        """The endpoint's host[:port]: part of every content key of this model's work."""
        return urlparse(self.base_url or OPENAI_BASE_URL).netloc


class ApiHyperparameters(Strict):
    """What an API fine-tune sets besides `train.epochs` (n_epochs); 'auto' lets the provider
    choose."""

    batch_size: int | Literal["auto"] = Field("auto", description="Examples per step.")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="Multiplier of the provider's base learning rate."
    )

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size is a whole number >= 1 or 'auto'")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_multiplier(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and value <= 0:
            raise ValueError("learning_rate_multiplier is a number > 0 or 'auto'")
        return value


def api_problems(
    models: Sequence[Any], finetunes: Sequence[Any], prices: Mapping[str, Any]
) -> list[str]:
    """What a campaign with API models gets wrong: settings the fine-tuning API has no knob
    for, an alignment step it cannot run, a budget without a price."""
    problems: list[str] = []
    api_models = [m for m in models if m.provider == "openai"]
    for i, model in enumerate(models):
        if model.provider != "openai":
            if model.api is not None:
                problems.append(f"models.{i}.api: only read with provider: openai; remove it")
            continue
        if model.align is not None:
            problems.append(
                f"models.{i}.align: an API model cannot be aligned here (no weights); remove "
                "align or use provider: local"
            )
        if model.revision is not None:
            problems.append(f"models.{i}.revision: not read with provider: openai; remove it")
        budget = model.api.budget_usd if model.api is not None else None
        if budget is not None and model.path not in prices:
            problems.append(
                f"models.{i}.api.budget_usd: judges.prices has no entry for {model.path!r}; add "
                f"judges.prices.{model.path} {{input_per_million, output_per_million, "
                "training_per_million}"
            )
    if not api_models:
        for j, arm in enumerate(finetunes):
            if arm.api != ApiHyperparameters():
                problems.append(
                    f"finetunes.{j}.api: only read for models with provider: openai; remove it"
                )
        return problems
    names = ", ".join(repr(m.name) for m in api_models)
    for j, arm in enumerate(finetunes):
        # Compared with the defaults, not the fields given: spec.json writes every field.
        if arm.lora != type(arm.lora)():
            problems.append(
                f"finetunes.{j}.lora: the fine-tuning API of {names} trains no LoRA shape; "
                "remove lora (put local and API models in separate campaigns to set it)"
            )
        default = type(arm.train)()
        rejected = sorted(
            name
            for name in type(arm.train).model_fields
            if name not in API_TRAIN_FIELDS and getattr(arm.train, name) != getattr(default, name)
        )
        if rejected:
            problems.append(
                f"finetunes.{j}.train: {', '.join(rejected)} not accepted by the fine-tuning API "
                f"of {names}; allowed: train.epochs (n_epochs), api.batch_size, "
                "api.learning_rate_multiplier"
            )
    return problems
