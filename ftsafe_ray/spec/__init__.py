"""The campaign spec: one typed, validated YAML document that fixes everything a campaign does.

The sections live in `training`, `evaluation` and `judges`; this module assembles the campaign,
checks its cross-references and reports every error at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ftsafe_ray.errors import SpecError
from ftsafe_ray.spec.adapters import TrainedAdapterSpec
from ftsafe_ray.spec.api import ApiEndpointSpec, ApiHyperparameters, api_problems
from ftsafe_ray.spec.common import NAME_PATTERN, Strict
from ftsafe_ray.spec.evaluation import (
    BenchmarkSpec,
    ConditionSpec,
    GenerationSpec,
    SamplingSpec,
    VllmSpec,
)
from ftsafe_ray.spec.judges import (
    JudgePrice,
    JudgesSpec,
    KeywordJudgeSpec,
    KeywordSetFile,
    RubricJudgeSpec,
)
from ftsafe_ray.spec.training import (
    AlignMixSpec,
    AlignSpec,
    BaseModelSpec,
    DatasetSpec,
    FinetuneResources,
    FinetuneSpec,
    LoraSpec,
    MixSpec,
    TrainSpec,
)

__all__ = [
    "NAME_PATTERN",
    "AlignMixSpec",
    "AlignSpec",
    "ApiEndpointSpec",
    "ApiHyperparameters",
    "BaseModelSpec",
    "BenchmarkSpec",
    "CampaignSpec",
    "ConditionSpec",
    "DatasetSpec",
    "FinetuneResources",
    "FinetuneSpec",
    "GenerationSpec",
    "JudgePrice",
    "JudgesSpec",
    "KeywordJudgeSpec",
    "KeywordSetFile",
    "LoraSpec",
    "MixSpec",
    "RubricJudgeSpec",
    "SamplingSpec",
    "TrainSpec",
    "TrainedAdapterSpec",
    "VllmSpec",
    "load_campaign",
    "parse_campaign",
]


class CampaignSpec(Strict):
    """A whole campaign: models × fine-tunes × sizes × seeds, evaluated on benchmarks."""

    name: str = Field(pattern=NAME_PATTERN)
    output_dir: str = Field(description="Run directory (relative to the campaign file).")
    models: tuple[BaseModelSpec, ...] = Field(min_length=1)
    datasets: tuple[DatasetSpec, ...] = ()
    finetunes: tuple[FinetuneSpec, ...] = ()
    adapters: tuple[TrainedAdapterSpec, ...] = Field(
        (), description="Adapters trained elsewhere, evaluated as they are (never trained)."
    )
    include_base: bool = Field(True, description="Evaluate each base model without fine-tuning.")
    seeds: tuple[int, ...] = Field((42,), min_length=1)
    benchmarks: tuple[BenchmarkSpec, ...] = Field(min_length=1)
    conditions: tuple[ConditionSpec, ...] = Field(
        (),
        description="Named evaluation conditions (e.g. with and without a backdoor trigger); "
        "every benchmark is evaluated under each. Default: one, the prompts as they are.",
    )
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
            ("conditions", self.conditions),
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
        problems += self._condition_problems()
        problems += self._adapter_problems()
        problems += api_problems(self.models, self.finetunes, self.judges.prices)
        if self.finetunes and "base" in {f.name for f in self.finetunes}:
            problems.append("finetunes: the name 'base' is reserved for the un-tuned model")
        if not self.include_base and not self.finetunes and not self.adapters:
            problems.append("finetunes: empty and include_base is false, so nothing would run")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _adapter_problems(self) -> list[str]:
        problems = []
        arms = {f.name for f in self.finetunes} | {"base"}
        models = [m.name for m in self.models]
        seen: set[str] = set()
        for i, adapter in enumerate(self.adapters):
            if adapter.name in arms or adapter.name in seen:
                problems.append(
                    f"adapters.{i}.name: {adapter.name!r} is already an arm name (or 'base'); "
                    "arm names are unique"
                )
            seen.add(adapter.name)
            if adapter.model is not None and adapter.model not in models:
                problems.append(
                    f"adapters.{i}.model: {adapter.model!r} is not a model name; allowed: {models}"
                )
        return problems

    def _condition_problems(self) -> list[str]:
        problems = []
        seen: dict[tuple[str | None, str | None], str] = {}
        for condition in self.conditions:
            change = (condition.suffix, condition.system_prompt)
            if change in seen and seen[change] != condition.name:
                problems.append(
                    f"conditions: {condition.name!r} changes the prompts exactly as "
                    f"{seen[change]!r} does; give it a different suffix or system_prompt"
                )
            seen.setdefault(change, condition.name)
        names = [c.name for c in self.conditions]
        for i, bench in enumerate(self.benchmarks):
            for j, name in enumerate(bench.conditions or ()):
                if name not in names:
                    problems.append(
                        f"benchmarks.{i}.conditions.{j}: {name!r} is not a condition name; "
                        f"allowed: {names or 'add one under conditions'}"
                    )
        return problems


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
