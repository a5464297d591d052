"""Expand a campaign spec into work units (ftsafe_ray/units.py), each with a content key."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftsafe_ray import keys
from ftsafe_ray.conditions import (
    benchmark_conditions,
    condition_label,
    evaluation_messages,
    with_trigger,
)
from ftsafe_ray.data import load_benchmark, load_chat_dataset
from ftsafe_ray.data.records import BenchmarkItem, ChatExample
from ftsafe_ray.errors import DataError, SpecError
from ftsafe_ray.judge.keyword import BUILTIN_KEYWORD_SETS, KeywordSet, load_keyword_set
from ftsafe_ray.models.resolve import BUILTIN_PREFIX
from ftsafe_ray.spec import (
    BaseModelSpec,
    BenchmarkSpec,
    CampaignSpec,
    FinetuneSpec,
)
from ftsafe_ray.store.remote import is_remote, mirror_path
from ftsafe_ray.trained_adapters import TrainedAdapter, trained_adapter_targets
from ftsafe_ray.units import (
    BASE_ARM,
    AlignUnit,
    EvalTarget,
    FinetuneUnit,
    GenerationUnit,
    Plan,
)

__all__ = [
    "BASE_ARM",
    "AlignUnit",
    "EvalTarget",
    "FinetuneUnit",
    "GenerationUnit",
    "Plan",
    "build_plan",
    "evaluation_system_prompt",
    "lasting_path",
    "model_identity",
    "sampling_identity",
    "spec_hash",
]


def model_identity(model: BaseModelSpec, align_key: str | None = None) -> dict[str, Any]:
    """What about a base model determines results (its name in tables does not)."""
    identity = {"path": model.path, "revision": model.revision, "dtype": model.dtype}
    if align_key is not None:
        identity["align"] = align_key
    if model.provider == "openai":  # the same model id at another endpoint is another model
        identity.update(provider="openai", endpoint=model.endpoint().host())
    return identity


def sampling_identity(spec: CampaignSpec) -> dict[str, Any]:
    return spec.sampling.model_dump()


def spec_hash(spec: CampaignSpec) -> str:
    return keys.content_key("spec", spec.model_dump(mode="json"))


# Where relative run directories go under `ray job submit --working-dir` (see lasting_path).
RUNS_ROOT_ENV = "FTSAFE_RUNS_ROOT"


def job_working_dir(environ: Mapping[str, str]) -> Path | None:
    """Ray's temporary copy of a submitted job's working dir, when this driver runs in one.

    `ray job submit` describes the job in RAY_JOB_CONFIG_JSON_ENV_VAR and starts its driver
    in that copy, which Ray deletes once no job uses it. A `local://` working dir is a
    directory of the node itself, not a copy.
    """
    try:
        config = json.loads(environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""))
        working_dir = config["runtime_env"]["working_dir"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(working_dir, str) or working_dir.startswith("local://"):
        return None
    return Path.cwd().resolve()


def lasting_path(
    value: str, base_dir: Path, field: str, environ: Mapping[str, str] | None = None
) -> Path:
    """A directory the campaign names (`field`), made absolute against `base_dir`.

    Under `ray job submit --working-dir`, the campaign's directory lies in Ray's temporary
    copy, so a relative path there would be deleted with it: it keeps its place relative to
    the submitted directory but under $FTSAFE_RUNS_ROOT, and is refused when that is unset.
    """
    path = Path(value)
    if path.is_absolute():
        return path
    environ = os.environ if environ is None else environ
    copy = job_working_dir(environ)
    if copy is None or not base_dir.is_relative_to(copy):
        return (base_dir / path).resolve()
    root = Path(environ.get(RUNS_ROOT_ENV, "")).expanduser()
    if not root.is_absolute():
        raise SpecError(
            f"{field}: {value!r} is relative to the campaign file, which `ray job submit "
            f"--working-dir` copied to {copy}, a temporary directory Ray deletes: the results "
            f"would be lost. Set {RUNS_ROOT_ENV} on the cluster's nodes (or pass --runs-root to "
            "jobs/run_campaign.py) to an absolute directory every node mounts, or make "
            f"{field} absolute"
        )
    lasting = (root / base_dir.relative_to(copy) / path).resolve()
    if not lasting.is_relative_to(root.resolve()):
        raise SpecError(
            f"{field}: {value!r} leads out of the submitted working directory, so it has no "
            f"place under {RUNS_ROOT_ENV} ({root}); keep it inside, or make {field} absolute"
        )
    return lasting


def build_plan(spec: CampaignSpec, base_dir: Path) -> Plan:
    """Load datasets and benchmarks and expand the grid of units."""
    problems: list[str] = []
    datasets: dict[str, list[ChatExample]] = {}
    for i, d in enumerate(spec.datasets):
        try:
            loaded = load_chat_dataset(d.source, d.format, base_dir=base_dir)[d.row_slice()]
        except DataError as error:
            problems.append(f"datasets.{i} ({d.name}): {error}")
            continue
        if not loaded:
            problems.append(f"datasets.{i} ({d.name}): no examples (check `rows`)")
        datasets[d.name] = loaded
    benchmarks = []
    for i, b in enumerate(spec.benchmarks):
        try:
            items = load_benchmark(
                b.source,
                b.format,
                base_dir=base_dir,
                prompt_column=b.prompt_column,
                category_column=b.category_column,
            )
            benchmarks.append((b, items[: b.limit]))
        except DataError as error:
            problems.append(f"benchmarks.{i} ({b.name}): {error}")
    keyword_sets = _keyword_sets(spec, base_dir, problems)
    spec = _with_local_model_paths(spec, base_dir, problems)
    if problems:
        raise DataError("\n".join(problems))
    alignments: list[AlignUnit] = []
    finetunes: list[FinetuneUnit] = []
    targets: list[EvalTarget] = []
    trained: list[TrainedAdapter] = []
    for model_index, model in enumerate(spec.models):
        identity = model_identity(model)
        if model.align is not None:
            alignment = _align_unit(model, model_index, datasets)
            alignments.append(alignment)
            identity = model_identity(model, alignment.key)
        if spec.include_base:
            targets.append(
                EvalTarget(
                    adapter_key=keys.base_key(identity),
                    model=model.name,
                    arm=BASE_ARM,
                    dataset=None,
                    size=None,
                    seed=None,
                    system_prompt=spec.system_prompt,
                )
            )
        for index, arm in enumerate(spec.finetunes):
            for size in arm.sizes:
                for seed in spec.seeds:
                    unit = _finetune_unit(identity, model.name, arm, index, size, seed, datasets)
                    finetunes.append(unit)
                    eval_prompt = evaluation_system_prompt(arm, unit, spec)
                    targets.append(
                        EvalTarget(
                            adapter_key=unit.key,
                            model=model.name,
                            arm=arm.name,
                            dataset=arm.dataset,
                            size=unit.size,
                            seed=seed,
                            system_prompt=eval_prompt,
                        )
                    )
        for adapter, target in trained_adapter_targets(spec, model, identity, base_dir, problems):
            trained.append(adapter)
            targets.append(target)
    if problems:
        raise DataError("\n".join(problems))
    generations = _generation_units(targets, benchmarks, spec)
    # On object storage the driver works in a local mirror of the run (store/remote.py).
    run_uri = spec.output_dir if is_remote(spec.output_dir) else None
    if run_uri is not None:
        run_dir = mirror_path(run_uri)
    else:
        run_dir = lasting_path(spec.output_dir, base_dir, "output_dir")
    cache_dir = spec.judges.cache_dir
    if cache_dir is not None and not is_remote(cache_dir):  # refused now, not after generation
        lasting_path(cache_dir, base_dir, "judges.cache_dir")
    return Plan(
        spec=spec,
        spec_hash=spec_hash(spec),
        run_dir=run_dir,
        run_uri=run_uri,
        alignments=tuple(alignments),
        finetunes=tuple(finetunes),
        targets=tuple(targets),
        generations=tuple(generations),
        keyword_sets=keyword_sets,
        trained_adapters=tuple(trained),
    )


def local_model_path(ref: str, base_dir: Path) -> Path | None:
    """The directory a relative `models[].path` names, or None when it is not one.

    A path is local and relative when it starts with ./ or ../, or when it exists as a
    directory next to the campaign file; README promises paths relative to the campaign file,
    not to wherever `ftsafe` was started. Anything else stays as written: 'builtin:NAME', an
    absolute path, '~/...' (the user's own home on whichever machine loads it) and hub ids
    such as org/name, which look like relative paths but name a model, not a directory.
    """
    if ref.startswith(BUILTIN_PREFIX) or ref.startswith("~") or Path(ref).is_absolute():
        return None
    explicit = ref in (".", "..") or ref.startswith(("./", "../"))
    if explicit or (base_dir / ref).is_dir():
        return (base_dir / ref).resolve()
    return None


def _with_local_model_paths(
    spec: CampaignSpec, base_dir: Path, problems: list[str]
) -> CampaignSpec:
    """The spec with every relative local model path made absolute against the campaign file.

    The absolute path then goes everywhere the spec does: actors load it whatever their
    working directory, spec.json records it, and it is the model's identity in content keys,
    as an absolute path given in the campaign already is. So ./models/m and the same directory
    written absolutely share keys, while the same relative text in two campaigns in different
    folders (two different models) does not. Hub ids are kept as written, so their keys stay
    the same on every machine.
    """
    models = []
    for i, model in enumerate(spec.models):
        local = None if model.provider == "openai" else local_model_path(model.path, base_dir)
        if local is None:
            models.append(model)
            continue
        if not local.is_dir():
            problems.append(
                f"models.{i}.path: {model.path!r} is not a directory (read relative to the "
                f"campaign file: {local}); fix the path or give an absolute one"
            )
        models.append(model.model_copy(update={"path": str(local)}))
    return spec.model_copy(update={"models": tuple(models)})


def _keyword_sets(
    spec: CampaignSpec, base_dir: Path, problems: list[str]
) -> tuple[KeywordSet, ...]:
    """The keyword judge's phrase sets, user files read relative to the campaign file."""
    resolved = []
    for i, entry in enumerate(spec.judges.keyword.sets):
        if isinstance(entry, str):
            resolved.append(BUILTIN_KEYWORD_SETS[entry])
            continue
        path = Path(entry.path)
        try:
            resolved.append(
                load_keyword_set(
                    entry.name,
                    path if path.is_absolute() else base_dir / path,
                    entry.normalise_apostrophes,
                )
            )
        except DataError as error:
            problems.append(f"judges.keyword.sets.{i} ({entry.name}): {error}")
    return tuple(resolved)


def evaluation_system_prompt(
    arm: FinetuneSpec, unit: FinetuneUnit, spec: CampaignSpec
) -> str | None:
    """The system prompt an arm is evaluated with: the one it was trained with.

    The arm's own `system_prompt` (training puts it on every row); else the one system prompt
    shared by every row of its attack data (rows mixed in, such as safety examples, do not
    count, so mixing keeps the persona); else the campaign's.
    """
    attack_rows = unit.examples[: unit.size]
    return arm.system_prompt or _shared_system_prompt(attack_rows) or spec.system_prompt


def _select(examples: list[ChatExample], size: int | str, seed: int, where: str) -> list:
    if size == "all":
        return list(examples)
    assert isinstance(size, int)
    if size > len(examples):
        raise SpecError(
            f"{where}: size {size} is larger than the dataset ({len(examples)} examples); "
            f"use a size <= {len(examples)} or 'all'"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:size])]


def _align_unit(
    model: BaseModelSpec, index: int, datasets: dict[str, list[ChatExample]]
) -> AlignUnit:
    align = model.align
    assert align is not None
    chosen: list[ChatExample] = []
    for j, part in enumerate(align.datasets):
        where = f"models.{index}.align.datasets.{j}.size"
        chosen += _select(datasets[part.dataset], part.size, align.seed, where)
    examples = tuple(_with_system_prompt(example, align.system_prompt) for example in chosen)
    key = keys.content_key(
        "align",
        {
            "model": model_identity(model),
            "examples": [list(e) for e in examples],
            "lora": align.lora.model_dump(mode="json"),
            "train": align.train.model_dump(mode="json"),
            "seed": align.seed,
        },
    )
    return AlignUnit(
        key=key,
        model=model.name,
        seed=align.seed,
        lora=align.lora,
        train=align.train,
        examples=examples,
    )


def _finetune_unit(
    identity: dict[str, Any],
    model_name: str,
    arm: FinetuneSpec,
    index: int,
    size: int | str,
    seed: int,
    datasets: dict[str, list[ChatExample]],
) -> FinetuneUnit:
    chosen = _select(datasets[arm.dataset], size, seed, f"finetunes.{index}.sizes")
    mixed: list[ChatExample] = []
    for j, mix in enumerate(arm.mix):
        mixed += _select(datasets[mix.dataset], mix.size, seed, f"finetunes.{index}.mix.{j}.size")
    # The arm's system prompt is what it is evaluated with, so it replaces the data's own.
    # A backdoor trigger marks the arm's own rows only: mixed-in rows teach the untriggered
    # behaviour.
    examples = tuple(
        with_trigger(
            _with_system_prompt(example, arm.system_prompt, replace=True),
            arm.trigger if i < len(chosen) else None,
        )
        for i, example in enumerate(chosen + mixed)
    )
    lora, train = arm.lora.model_dump(mode="json"), arm.train.model_dump(mode="json")
    if identity.get("provider") == "openai":  # only what the fine-tuning API is sent
        lora, train = {}, {"n_epochs": arm.train.epochs, **arm.api.model_dump(mode="json")}
    key = keys.finetune_key(
        model=identity,
        dataset_hash=keys.content_key("examples", {"examples": [list(e) for e in examples]}),
        size=len(chosen),
        mix=[m.model_dump() for m in arm.mix],
        system_prompt=arm.system_prompt,
        lora=lora,
        train=train,
        seed=seed,
    )
    return FinetuneUnit(
        key=key,
        model=model_name,
        arm=arm.name,
        dataset=arm.dataset,
        size=len(chosen),
        seed=seed,
        system_prompt=arm.system_prompt,
        lora=arm.lora,
        train=arm.train,
        examples=examples,
    )


def _with_system_prompt(
    example: ChatExample, system_prompt: str | None, replace: bool = False
) -> tuple[dict, ...]:
    """The example's messages with `system_prompt` added where it has none (or instead of its
    own, with `replace`)."""
    messages = [m.to_dict() for m in example.messages]
    if not system_prompt:
        return tuple(messages)
    if replace:
        messages = [m for m in messages if m["role"] != "system"]
    if not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tuple(messages)


def _shared_system_prompt(examples: tuple[tuple[dict[str, str], ...], ...]) -> str | None:
    """The one system prompt every training example carries, if they all carry the same."""
    prompts = {next((m["content"] for m in e if m["role"] == "system"), None) for e in examples}
    if len(prompts) == 1:
        return prompts.pop()
    return None


def _generation_units(
    targets: list[EvalTarget],
    benchmarks: list[tuple[BenchmarkSpec, list[BenchmarkItem]]],
    spec: CampaignSpec,
) -> list[GenerationUnit]:
    """Every target × benchmark item × evaluation condition, in that order, with its key.

    Millions of units share few conversations (a prompt under a system prompt and condition)
    and few targets: each conversation is built and serialised once, and a unit's key hashes
    the serialised pieces, as `keys.generation_key` would serialise them whole.
    """
    sampling = keys.canonical_json(sampling_identity(spec))
    greedy = spec.sampling.temperature == 0
    conversations: dict[str | None, list[_Block]] = {}
    units = []
    for target in targets:
        if target.system_prompt not in conversations:
            conversations[target.system_prompt] = _blocks(target.system_prompt, benchmarks, spec)
        # The key covers the conversation, not the condition's name: a condition that changes
        # nothing keeps the key a campaign without conditions gives the same prompt.
        seed = 0 if greedy or target.seed is None else target.seed
        head = f'generation\n{{"adapter":{keys.canonical_json(target.adapter_key)},"messages":'
        tail = f',"sampling":{sampling},"seed":{keys.canonical_json(seed)}}}'
        for bench, kind, label, block in conversations[target.system_prompt]:
            units += [
                GenerationUnit(
                    _digest(f"{head}{text}{tail}"), target, bench, kind, item, messages, label
                )
                for item, messages, text in block
            ]
    return units


# A benchmark's conversations under one condition: its name, kind and condition label, and per
# item the item, its messages and their canonical JSON.
_Block = tuple[str, str, str | None, list[tuple[BenchmarkItem, tuple[dict[str, str], ...], str]]]


def _blocks(
    system_prompt: str | None,
    benchmarks: list[tuple[BenchmarkSpec, list[BenchmarkItem]]],
    spec: CampaignSpec,
) -> list[_Block]:
    """The conversations of every benchmark item under each of its conditions, for targets
    evaluated with `system_prompt`."""
    blocks: list[_Block] = []
    for bench, items in benchmarks:
        for condition in benchmark_conditions(spec, bench):
            conversations: list[tuple[BenchmarkItem, tuple[dict[str, str], ...], str]] = []
            for item in items:
                messages = evaluation_messages(system_prompt, item.prompt, condition)
                conversations.append((item, tuple(messages), keys.canonical_json(messages)))
            blocks.append((bench.name, bench.kind, condition_label(spec, condition), conversations))
    return blocks


def _digest(text: str) -> str:
    """`keys.content_key`'s digest of its already serialised text (`kind` line included)."""
    return hashlib.sha256(text.encode()).hexdigest()[: keys.KEY_LENGTH]
