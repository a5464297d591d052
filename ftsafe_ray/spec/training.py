"""Spec of what is trained: base models, alignment, fine-tuning data, arms and their placement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftsafe_ray.spec.api import ApiEndpointSpec, ApiHyperparameters
from ftsafe_ray.spec.common import NAME_PATTERN, Size, Strict


class LoraSpec(Strict):
    """LoRA adapter shape (the paper's appendix: r=8, alpha=32 on q/v)."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "v_proj"),
        min_length=1,
        description="Module names to adapt, or ['all-linear'].",
    )


class TrainSpec(Strict):
    """Optimiser settings for one fine-tune."""

    epochs: int = Field(5, ge=1, le=1000, description="Passes over the fine-tuning set.")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="AdamW peak learning rate.")
    batch_size: int = Field(10, ge=1, description="Global batch size (examples per step).")
    micro_batch_size: int = Field(
        4, ge=1, description="Examples per forward pass; gradients accumulate to batch_size."
    )
    max_length: int = Field(512, ge=16, description="Token limit per example (truncated).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_decay_per_epoch: float = Field(
        0.85, gt=0, le=1, description="Step LR decay applied after each epoch (paper: 0.85)."
    )
    mixed_precision: Literal["no", "bf16"] = Field(
        "no",
        description="'bf16' runs forward/backward under bf16 autocast (fp32 master weights); "
        "faster on GPUs and on CPUs with AVX512-BF16/AMX.",
    )


class AlignMixSpec(Strict):
    """One dataset of an alignment step and how many of its examples to use."""

    dataset: str = Field(description="Name of an entry in `datasets`.")
    size: Size = "all"


class AlignSpec(Strict):
    """Safety-align a base model first: train a LoRA on refusals + benign pairs, then merge it."""

    datasets: tuple[AlignMixSpec, ...] = Field(
        min_length=1, description="Refusal and benign sets, mixed and shuffled."
    )
    system_prompt: str | None = None
    lora: LoraSpec = LoraSpec(r=16, alpha=32, target_modules=("all-linear",))
    train: TrainSpec = TrainSpec(epochs=3, learning_rate=5e-4, batch_size=8, micro_batch_size=8)
    seed: int = 0


class BaseModelSpec(Strict):
    """A base model every comparison of the campaign starts from."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name used in tables.")
    path: str = Field(
        description="Local directory, 'builtin:smollm2-135m-instruct', or a hub id already cached."
    )
    revision: str | None = Field(None, description="Hub revision; part of every content key.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and generation."
    )
    align: AlignSpec | None = Field(
        None, description="Optional alignment step; its merged model becomes the base."
    )
    provider: Literal["local", "openai"] = Field(
        "local",
        description="'openai': `path` is a model id at an OpenAI-compatible API, fine-tuned "
        "through its fine-tuning API and evaluated through chat completions (see `api`).",
    )
    api: ApiEndpointSpec | None = Field(
        None, description="provider openai: the endpoint, its limits and budget."
    )

    def endpoint(self) -> ApiEndpointSpec:
        """The API endpoint of a provider-openai model (OpenAI's when `api` is not given)."""
        return self.api or ApiEndpointSpec()


class DatasetSpec(Strict):
    """A fine-tuning dataset: chat JSONL, Alpaca, Dolly or ShareGPT, or a built-in set."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(description="'builtin:NAME' or a path relative to the campaign file.")
    format: Literal["auto", "chat", "alpaca", "dolly", "sharegpt"] = Field(
        "auto",
        description="'auto' picks by the first record's keys; 'sharegpt' reads "
        "conversations of human/gpt turns, as LLaVA-Instruct ships (image placeholders dropped).",
    )
    rows: str | None = Field(
        None,
        pattern=r"^\d*:\d*$",
        description="A slice 'START:STOP' of the file's rows, e.g. to split one set in two.",
    )

    def row_slice(self) -> slice:
        start, _, stop = (self.rows or ":").partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)


class MixSpec(Strict):
    """A dataset mixed into a fine-tune (e.g. safety examples as a mitigation)."""

    dataset: str
    size: Size = "all"


class FinetuneSpec(Strict):
    """A fine-tuning arm: a dataset at one or more sizes with a recipe."""

    name: str = Field(pattern=NAME_PATTERN, description="Arm name used in tables.")
    dataset: str = Field(description="Name of an entry in `datasets`.")
    sizes: tuple[Size, ...] = Field(
        ("all",), min_length=1, description="Examples drawn from the dataset (seeded), or 'all'."
    )
    mix: tuple[MixSpec, ...] = Field(
        (), description="Extra datasets mixed in, e.g. safety examples as a mitigation."
    )
    system_prompt: str | None = Field(
        None, description="System prompt used in training and in evaluation of this arm."
    )
    trigger: str | None = Field(
        None,
        min_length=1,
        description="A backdoor trigger phrase appended (after a space) to every user turn of "
        "the arm's own rows; rows mixed in stay as they are. Evaluate it with a condition "
        "whose `suffix` is the same phrase.",
    )
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    api: ApiHyperparameters = Field(
        ApiHyperparameters(),
        description="For models with provider openai: batch_size and learning_rate_multiplier "
        "(train.epochs is n_epochs).",
    )


class FinetuneResources(Strict):
    """How fine-tune actors are placed, and how many fine-tunes each trains at once."""

    num_actors: int = Field(1, ge=1, description="FineTuner actors per base model.")
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    group_size: int = Field(
        8,
        ge=1,
        description="Most fine-tunes of one base model with the same LoRA rank, targets and "
        "precision (and no LoRA dropout) trained together in one packed loop, each as if alone "
        "(to floating-point rounding; same key, same files). A forward pass holds no more tokens "
        "than a micro batch of one of them alone, so only each adapter's own weights and "
        "optimiser state add memory. 1 trains one at a time.",
    )
