"""The units of work a plan is made of: fine-tunes, alignments, evaluation targets, answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from ftsafe_ray.data.records import BenchmarkItem
from ftsafe_ray.judge.keyword import KeywordSet
from ftsafe_ray.spec import BaseModelSpec, CampaignSpec, LoraSpec, TrainSpec
from ftsafe_ray.store.run_dir import ADAPTERS_DIR, ALIGNED_DIR
from ftsafe_ray.trained_adapters import TrainedAdapter

BASE_ARM = "base"
_UNIT_TYPES = {"size": pa.int64(), "seed": pa.int64()}


@dataclass(frozen=True)
class FinetuneUnit:
    """One LoRA fine-tune: a base model, a data selection, a recipe and a seed."""

    key: str
    model: str
    arm: str
    dataset: str
    size: int
    seed: int
    system_prompt: str | None
    lora: LoraSpec
    train: TrainSpec
    examples: tuple[tuple[dict[str, str], ...], ...] = field(repr=False)

    @property
    def output_path(self) -> str:
        """Where the adapter lives, relative to the run directory."""
        return f"{ADAPTERS_DIR}/{self.key}"


@dataclass(frozen=True)
class AlignUnit:
    """The alignment step of a base model: a LoRA trained on safety data, merged into the base."""

    key: str
    model: str
    seed: int
    lora: LoraSpec
    train: TrainSpec
    examples: tuple[tuple[dict[str, str], ...], ...] = field(repr=False)

    arm: str = "align"
    dataset: str | None = None
    system_prompt: str | None = None

    @property
    def size(self) -> int:
        return len(self.examples)

    @property
    def output_path(self) -> str:
        """Where the merged model lives, relative to the run directory."""
        return f"{ALIGNED_DIR}/{self.key}"


@dataclass(frozen=True)
class EvalTarget:
    """Weights to evaluate: a base model alone or with one fine-tune's adapter."""

    adapter_key: str
    model: str
    arm: str
    dataset: str | None
    size: int | None
    seed: int | None
    system_prompt: str | None

    @property
    def is_base(self) -> bool:
        return self.arm == BASE_ARM


@dataclass(frozen=True)
class GenerationUnit:
    """One prompt of one benchmark for one evaluation target, under one evaluation condition.

    `condition` is the condition's name, None in a campaign that names no conditions.
    """

    key: str
    target: EvalTarget
    benchmark: str
    benchmark_kind: str
    item: BenchmarkItem
    messages: tuple[dict[str, str], ...]
    condition: str | None = None

    @property
    def system_prompt(self) -> str | None:
        """The system prompt the answer is generated under (a condition may replace the
        target's)."""
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)


@dataclass(frozen=True)
class Plan:
    """Everything a campaign will compute, before looking at what is already done."""

    spec: CampaignSpec
    spec_hash: str
    run_dir: Path
    alignments: tuple[AlignUnit, ...]
    finetunes: tuple[FinetuneUnit, ...]
    targets: tuple[EvalTarget, ...]
    generations: tuple[GenerationUnit, ...]
    keyword_sets: tuple[KeywordSet, ...] = ()
    # The object-storage URI of the run directory (run_dir is then its local mirror).
    run_uri: str | None = None
    # Adapters trained elsewhere (`adapters:`), evaluated as they are.
    trained_adapters: tuple[TrainedAdapter, ...] = ()

    @cached_property
    def unique_generations(self) -> tuple[GenerationUnit, ...]:
        """One unit per distinct generation key (the first), in plan order."""
        return tuple({unit.key: unit for unit in self.generations}.values())

    @cached_property
    def generation_keys(self) -> pa.Array:
        """The keys of `unique_generations`, as an Arrow array (for columnar lookups)."""
        return pa.array([unit.key for unit in self.unique_generations], pa.string())

    @cached_property
    def generation_adapters(self) -> pa.Table:
        """For each of `unique_generations`: its `adapter_key` and whether it `is_base`."""
        targets = [unit.target for unit in self.unique_generations]
        return pa.table(
            {
                "adapter_key": pa.array([t.adapter_key for t in targets], pa.string()),
                "is_base": pa.array([t.is_base for t in targets], pa.bool_()),
            }
        )

    def unit_labels(self) -> list[dict[str, Any]]:
        """Every evaluation unit's content key and labels, one row per unit (shared keys too)."""
        return [
            {
                "generation_key": unit.key,
                "adapter_key": unit.target.adapter_key,
                "model": unit.target.model,
                "arm": unit.target.arm,
                "dataset": unit.target.dataset,
                "size": unit.target.size,
                "seed": unit.target.seed,
                "benchmark": unit.benchmark,
                "condition": unit.condition,
                "benchmark_kind": unit.benchmark_kind,
                "item_id": unit.item.item_id,
                "category": unit.item.category,
            }
            for unit in self.generations
        ]

    def unit_table(self) -> pa.Table:
        """`unit_labels` as columns (a million units need no million dictionaries)."""
        units = self.generations
        targets = [unit.target for unit in units]
        items = [unit.item for unit in units]
        columns = {
            "generation_key": [unit.key for unit in units],
            "adapter_key": [t.adapter_key for t in targets],
            "model": [t.model for t in targets],
            "arm": [t.arm for t in targets],
            "dataset": [t.dataset for t in targets],
            "size": [t.size for t in targets],
            "seed": [t.seed for t in targets],
            "benchmark": [unit.benchmark for unit in units],
            "condition": [unit.condition for unit in units],
            "benchmark_kind": [unit.benchmark_kind for unit in units],
            "item_id": [item.item_id for item in items],
            "category": [item.category for item in items],
        }
        return pa.table(
            {
                name: pa.array(values, _UNIT_TYPES.get(name, pa.string()))
                for name, values in columns.items()
            }
        )

    def model_spec(self, name: str) -> BaseModelSpec:
        return next(m for m in self.spec.models if m.name == name)

    def alignment(self, model: str) -> AlignUnit | None:
        return next((a for a in self.alignments if a.model == model), None)

    def model_path(self, name: str) -> str:
        """The weights every unit of this model starts from: the aligned merge, or the base."""
        aligned = self.alignment(name)
        if aligned is not None:
            if self.run_uri:
                return f"{self.run_uri.rstrip('/')}/{aligned.output_path}"
            return str(self.run_dir / aligned.output_path)
        return self.model_spec(name).path

    def model_revision(self, name: str) -> str | None:
        """The hub revision to load model_path at; None for the aligned merge (a local dir)."""
        if self.alignment(name) is not None:
            return None
        return self.model_spec(name).revision
