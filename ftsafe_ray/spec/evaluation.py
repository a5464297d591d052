"""Spec of how arms are evaluated: benchmarks, sampling and the generation backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftsafe_ray.spec.common import NAME_PATTERN, Strict


class ConditionSpec(Strict):
    """A named evaluation condition: how a benchmark's prompts are changed before generation.

    A condition that changes nothing (no suffix, no system prompt) evaluates the prompts as
    they are and shares its answers with a campaign that names no conditions.
    """

    name: str = Field(pattern=NAME_PATTERN, description="Condition name used in tables.")
    suffix: str | None = Field(
        None,
        min_length=1,
        description="Appended to the user turn after a space, e.g. a backdoor trigger "
        "(the same join as a fine-tune's `trigger`).",
    )
    system_prompt: str | None = Field(
        None,
        description="Replaces the evaluation system prompt of every target under this "
        "condition; '' evaluates with none; null keeps each target's own.",
    )


class BenchmarkSpec(Strict):
    """An evaluation set of requests, optionally categorised."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(description="'builtin:NAME' or a path (JSONL, HEx-PHI dir, AdvBench CSV).")
    format: Literal["auto", "jsonl", "hexphi", "advbench", "harmbench", "csv"] = Field(
        "auto",
        description="'auto' picks by extension, AdvBench/HarmBench header or category_N.csv name; "
        "'csv' is any CSV with a header row and needs prompt_column.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N items.")
    kind: Literal["harmful", "benign", "utility"] = Field(
        "harmful",
        description="'benign' sets measure over-refusal instead of harm; 'utility' sets "
        "(optional `reference` answers) are rated 1-10 for helpfulness by the rubric judge.",
    )
    prompt_column: str | None = Field(
        None,
        min_length=1,
        # Validated even when absent: format csv requires it.
        validate_default=True,
        description="format csv: the header of the column that holds the prompts, e.g. 'goal'.",
    )
    category_column: str | None = Field(
        None,
        min_length=1,
        description="format csv: the header of a category column; default: the file name.",
    )
    conditions: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="Names of campaign `conditions` to evaluate this benchmark under "
        "(default: all of them).",
    )

    @field_validator("prompt_column", "category_column")
    @classmethod
    def _columns_go_with_csv(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A plain CSV has no fixed layout, so it must name its prompt column: guessing would
        # read the header as a prompt or glue columns together. Other formats have a fixed
        # layout and would silently ignore a column name, so one given there is a mistake.
        fmt = info.data.get("format")
        if fmt is None:  # format itself is invalid and reported on its own
            return value
        if value is None and fmt == "csv" and info.field_name == "prompt_column":
            raise ValueError(
                "required with format: csv; name the header of the prompt column, "
                "e.g. prompt_column: goal"
            )
        if value is not None and fmt != "csv":
            raise ValueError(
                f"only read with format: csv (this benchmark has format: {fmt}); "
                f"set format: csv or remove {info.field_name}"
            )
        return value


class SamplingSpec(Strict):
    """Decoding settings; greedy by default, as in the study."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class VllmSpec(Strict):
    """vLLM engine settings (used when generation.backend is 'vllm'); one engine per actor."""

    max_loras: int = Field(4, ge=1, description="Adapters active in one batch on the device.")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters cached in host memory (default: max_loras)."
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        16, description="Largest adapter rank the engine accepts (a vLLM-supported value)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory the engine may use."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine shards the model over (set num_gpus to match)."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + answer); default: the model's."
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences decoded at once.")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start).")
    cpu_kvcache_space_gb: int = Field(
        1, ge=1, description="KV cache size on CPU-only machines ($VLLM_CPU_KVCACHE_SPACE)."
    )


class GenerationSpec(Strict):
    """Which generation backend runs and how it is placed."""

    backend: Literal["auto", "transformers", "vllm"] = Field(
        "transformers",
        description="'auto': vLLM where it is installed and faster (GPUs, CPUs with AVX-512), "
        "else transformers.",
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    num_actors: int = Field(1, ge=1, description="Generator actors per base model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per generator actor.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per generator actor.")
    check_adapters: bool = Field(
        True,
        description="Before generating, stop on an adapter whose files prove it does nothing "
        "(all-zero LoRA B, a target module the base lacks); record whether each adapter "
        "measurably changes the next-token distribution (adapter_checks.json).",
    )
    vllm: VllmSpec = VllmSpec()

    @model_validator(mode="after")
    def _vllm_placement(self) -> GenerationSpec:
        engine = self.vllm
        problems = []
        if engine.max_cpu_loras is not None and engine.max_cpu_loras < engine.max_loras:
            problems.append(
                f"vllm.max_cpu_loras: {engine.max_cpu_loras} is below vllm.max_loras "
                f"{engine.max_loras}; set it >= max_loras or leave it unset"
            )
        if self.backend == "vllm" and self.num_gpus:
            if engine.tensor_parallel_size > 1 and self.num_gpus != engine.tensor_parallel_size:
                problems.append(
                    f"num_gpus: {self.num_gpus:g} must equal vllm.tensor_parallel_size "
                    f"{engine.tensor_parallel_size} (one engine holds all its GPUs)"
                )
            if self.num_gpus < 1 and engine.gpu_memory_utilization > self.num_gpus:
                problems.append(
                    f"vllm.gpu_memory_utilization: {engine.gpu_memory_utilization:g} exceeds this "
                    f"actor's GPU share num_gpus={self.num_gpus:g}; set it <= {self.num_gpus:g}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self
