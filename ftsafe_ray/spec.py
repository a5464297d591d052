"""The campaign spec: one typed, validated YAML document that fixes everything a campaign does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ftsafe_ray.errors import SpecError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(_Strict):
    """LoRA adapter shape (the paper's appendix: r=8, alpha=32 on q/v)."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "v_proj"),
        min_length=1,
        description="Module names to adapt, or ['all-linear'].",
    )


class TrainSpec(_Strict):
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


class AlignMixSpec(_Strict):
    """One dataset of an alignment step and how many of its examples to use."""

    dataset: str = Field(description="Name of an entry in `datasets`.")
    size: int | Literal["all"] = "all"


class AlignSpec(_Strict):
    """Safety-align a base model first: train a LoRA on refusals + benign pairs, then merge it."""

    datasets: tuple[AlignMixSpec, ...] = Field(
        min_length=1, description="Refusal and benign sets, mixed and shuffled."
    )
    system_prompt: str | None = None
    lora: LoraSpec = LoraSpec(r=16, alpha=32, target_modules=("all-linear",))
    train: TrainSpec = TrainSpec(epochs=3, learning_rate=5e-4, batch_size=8, micro_batch_size=8)
    seed: int = 0


class BaseModelSpec(_Strict):
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


class DatasetSpec(_Strict):
    """A fine-tuning dataset: chat JSONL, Alpaca or Dolly, or a built-in set."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(description="'builtin:NAME' or a path relative to the campaign file.")
    format: Literal["auto", "chat", "alpaca", "dolly"] = "auto"
    rows: str | None = Field(
        None,
        pattern=r"^\d*:\d*$",
        description="A slice 'START:STOP' of the file's rows, e.g. to split one set in two.",
    )

    def row_slice(self) -> slice:
        start, _, stop = (self.rows or ":").partition(":")
        return slice(int(start) if start else None, int(stop) if stop else None)


class MixSpec(_Strict):
    """A dataset mixed into a fine-tune (e.g. safety examples as a mitigation)."""

    dataset: str
    size: int | Literal["all"] = "all"


class FinetuneSpec(_Strict):
    """A fine-tuning arm: a dataset at one or more sizes with a recipe."""

    name: str = Field(pattern=NAME_PATTERN, description="Arm name used in tables.")
    dataset: str = Field(description="Name of an entry in `datasets`.")
    sizes: tuple[int | Literal["all"], ...] = Field(
        ("all",), min_length=1, description="Examples drawn from the dataset (seeded), or 'all'."
    )
    mix: tuple[MixSpec, ...] = Field(
        (), description="Extra datasets mixed in, e.g. safety examples as a mitigation."
    )
    system_prompt: str | None = Field(
        None, description="System prompt used in training and in evaluation of this arm."
    )
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()


class BenchmarkSpec(_Strict):
    """An evaluation set of requests, optionally categorised."""

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(description="'builtin:NAME' or a path (JSONL, HEx-PHI dir, AdvBench CSV).")
    format: Literal["auto", "jsonl", "hexphi", "advbench", "harmbench", "csv"] = Field(
        "auto",
        description="'auto' picks by extension, AdvBench/HarmBench header or category_N.csv name; "
        "'csv' is any CSV with a header row and needs prompt_column.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N items.")
    kind: Literal["harmful", "benign"] = Field(
        "harmful", description="'benign' sets measure over-refusal instead of harm."
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


class SamplingSpec(_Strict):
    """Decoding settings; greedy by default, as in the study."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class VllmSpec(_Strict):
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


class GenerationSpec(_Strict):
    """Which generation backend runs and how it is placed."""

    backend: Literal["auto", "transformers", "vllm"] = Field(
        "transformers", description="'auto': vLLM when the driver can import it, else transformers."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    num_actors: int = Field(1, ge=1, description="Generator actors per base model.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per generator actor.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per generator actor.")
    check_adapters: bool = Field(
        True,
        description="Before generating, stop if an adapter answers a few prompts exactly "
        "like the base model (an adapter that was not applied).",
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


class FinetuneResources(_Strict):
    """How fine-tune actors are placed."""

    num_actors: int = Field(1, ge=1, description="FineTuner actors per base model.")
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)


class KeywordSetFile(_Strict):
    """A user phrase set: a UTF-8 text file, one refusal phrase per line, kept verbatim."""

    name: str = Field(pattern=NAME_PATTERN, description="Set name; report column suffix.")
    path: str = Field(description="Phrase file, relative to the campaign file.")
    normalise_apostrophes: bool = Field(
        False, description="Read curly apostrophes as ASCII ones before matching."
    )


class KeywordJudgeSpec(_Strict):
    """Refusal-phrase judge (keyword ASR), run once per phrase set."""

    enabled: bool = True
    sets: tuple[str | KeywordSetFile, ...] = Field(
        ("study",),
        min_length=1,
        description="'study' (the paper's 29 phrases and rule, verbatim), 'extended' (study + "
        "modern refusals, apostrophes normalised), or {name, path} of a phrase file.",
    )

    @field_validator("sets")
    @classmethod
    def _known_sets(
        cls, sets: tuple[str | KeywordSetFile, ...]
    ) -> tuple[str | KeywordSetFile, ...]:
        from ftsafe_ray.judge.keyword import BUILTIN_KEYWORD_SETS

        problems = []
        names = [s if isinstance(s, str) else s.name for s in sets]
        for entry in sets:
            if isinstance(entry, str) and entry not in BUILTIN_KEYWORD_SETS:
                problems.append(
                    f"unknown keyword set {entry!r}; allowed: {sorted(BUILTIN_KEYWORD_SETS)} "
                    "or {name: ..., path: phrases.txt}"
                )
            if isinstance(entry, KeywordSetFile) and entry.name in BUILTIN_KEYWORD_SETS:
                problems.append(
                    f"keyword set file {entry.path!r} is named {entry.name!r}, a built-in set's "
                    "name; give it another name"
                )
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            problems.append(f"keyword set names must be unique, {duplicated} repeat")
        if problems:
            raise ValueError("; ".join(problems))
        return sets

    def set_names(self) -> tuple[str, ...]:
        """The sets' names in spec order."""
        return tuple(s if isinstance(s, str) else s.name for s in self.sets)


class RubricJudgeSpec(_Strict):
    """The rubric judge (1–5 HEx-PHI or StrongREJECT) behind any OpenAI-compatible endpoint."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="'auto' runs it when the API key variable is set."
    )
    model: str = Field("gpt-4", description="Judge model name at the endpoint.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL; None = OpenAI.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable with the key.")
    rubric: str = Field(
        "hexphi",
        description="Prompt + parser: 'hexphi' (1–5), 'strongreject', or 'module:object'.",
    )
    mode: Literal["online", "batch"] = Field(
        "online", description="'online': rate-limited actor pool; 'batch': OpenAI Batch API."
    )
    num_actors: int = Field(
        1, ge=1, le=256, description="Judge actors; all share one cluster-wide rate budget."
    )
    max_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight per actor.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries per request before 'error'.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="Provider limit for this model, enforced across the cluster."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Provider limit (prompt + max_tokens), across the cluster."
    )
    max_tokens: int = Field(512, ge=16, description="Judge answer length limit.")
    budget_usd: float | None = Field(
        None, gt=0, description="Stop new judge calls once this campaign's judge spend reaches it."
    )
    batch_max_requests: int = Field(
        50_000, ge=1, le=50_000, description="Requests per Batch API job (batch mode)."
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between batch status polls.")

    @field_validator("rubric")
    @classmethod
    def _known_rubric(cls, name: str) -> str:
        from ftsafe_ray.judge.rubrics import is_valid_rubric_name, rubric_names

        if not is_valid_rubric_name(name):
            raise ValueError(
                f"unknown rubric {name!r}; allowed: {sorted(rubric_names())} or 'module:object'"
            )
        return name


class JudgePrice(_Strict):
    """What a judge model costs, in US dollars per million tokens."""

    input_per_million: float = Field(ge=0, description="$ per 1M prompt tokens.")
    output_per_million: float = Field(ge=0, description="$ per 1M completion tokens.")
    batch_discount: float = Field(
        0.5, ge=0, le=1, description="Share of the price the Batch API charges (OpenAI: 0.5)."
    )


class JudgesSpec(_Strict):
    keyword: KeywordJudgeSpec = KeywordJudgeSpec()
    rubric: RubricJudgeSpec = RubricJudgeSpec()
    cache_dir: str | None = Field(
        None,
        description="A judgments table shared by campaigns (relative to the campaign file); "
        "verdicts found there are reused, new ones added. Default: the run dir's judgments.",
    )
    prices: dict[str, JudgePrice] = Field(
        default_factory=dict, description="Judge model name → price, for `plan` and budget_usd."
    )

    @model_validator(mode="after")
    def _budget_needs_a_price(self) -> JudgesSpec:
        if self.rubric.budget_usd is not None and self.rubric.model not in self.prices:
            raise ValueError(
                f"rubric.budget_usd is set but judges.prices has no entry for "
                f"{self.rubric.model!r}; add judges.prices.{self.rubric.model}"
                " {input_per_million, output_per_million}"
            )
        return self


class CampaignSpec(_Strict):
    """A whole campaign: models × fine-tunes × sizes × seeds, evaluated on benchmarks."""

    name: str = Field(pattern=NAME_PATTERN)
    output_dir: str = Field(description="Run directory (relative to the campaign file).")
    models: tuple[BaseModelSpec, ...] = Field(min_length=1)
    datasets: tuple[DatasetSpec, ...] = ()
    finetunes: tuple[FinetuneSpec, ...] = ()
    include_base: bool = Field(True, description="Evaluate each base model without fine-tuning.")
    seeds: tuple[int, ...] = Field((42,), min_length=1)
    benchmarks: tuple[BenchmarkSpec, ...] = Field(min_length=1)
    system_prompt: str | None = Field(
        None, description="System prompt for evaluating arms that set none (and the base)."
    )
    sampling: SamplingSpec = SamplingSpec()
    generation: GenerationSpec = GenerationSpec()
    finetune_resources: FinetuneResources = FinetuneResources()
    judges: JudgesSpec = JudgesSpec()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {list(seeds)}")
        return seeds

    @model_validator(mode="after")
    def _cross_references(self) -> CampaignSpec:
        problems: list[str] = []
        for field, entries in (
            ("models", self.models),
            ("datasets", self.datasets),
            ("finetunes", self.finetunes),
            ("benchmarks", self.benchmarks),
        ):
            seen: set[str] = set()
            for entry in entries:
                if entry.name in seen:
                    problems.append(f"{field}: name {entry.name!r} is used twice; names are unique")
                seen.add(entry.name)
        dataset_names = {d.name for d in self.datasets}
        allowed = sorted(dataset_names) or "add one under datasets"
        for i, model in enumerate(self.models):
            for j, part in enumerate(model.align.datasets if model.align else ()):
                if part.dataset not in dataset_names:
                    problems.append(
                        f"models.{i}.align.datasets.{j}.dataset: {part.dataset!r} is not a "
                        f"dataset name; allowed: {allowed}"
                    )
        for i, arm in enumerate(self.finetunes):
            refs = [("dataset", arm.dataset)] + [
                (f"mix.{j}.dataset", m.dataset) for j, m in enumerate(arm.mix)
            ]
            for where, ref in refs:
                if ref not in dataset_names:
                    problems.append(
                        f"finetunes.{i}.{where}: {ref!r} is not a dataset name; "
                        f"allowed: {sorted(dataset_names) or 'add one under datasets'}"
                    )
        if self.finetunes and "base" in {f.name for f in self.finetunes}:
            problems.append("finetunes: the name 'base' is reserved for the un-tuned model")
        if not self.include_base and not self.finetunes:
            problems.append("finetunes: empty and include_base is false, so nothing would run")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _format_errors(source: str, error: ValidationError) -> str:
    lines = []
    errors = error.errors()
    # pydantic drops a list's invalid items and then finds the list too short: that follow-on
    # error says nothing the item's own error does not, so it is left out.
    nested = {tuple(e["loc"][:i]) for e in errors for i in range(1, len(e["loc"]))}
    for err in errors:
        if err["type"] == "too_short" and tuple(err["loc"]) in nested:
            continue
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        if err["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against the campaign format in README"
        lines.append(f"{source}: {where}: {message}{shown}")
    return "\n".join(lines)


def parse_campaign(data: Any, source: str = "<campaign>") -> CampaignSpec:
    """Validate a mapping as a campaign, raising one SpecError that lists every problem."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the campaign must be a YAML mapping, got {type(data).__name__}")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(source, error)) from None


def load_campaign(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such campaign file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(
            f"{path}:{where} is not valid YAML ({getattr(error, 'problem', error)})"
        ) from None
    return parse_campaign(data, source=str(path))
