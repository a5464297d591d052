"""Fine-tune stages: align base models, then train every arm's adapter on FineTuner actors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftsafe_ray.errors import StageError
from ftsafe_ray.finetune.actor import unit_row
from ftsafe_ray.plan import AlignUnit, FinetuneUnit, Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.store import RunStore

STAGE = "fine-tune"
ALIGN_STAGE = "align"
STEPS = "train steps"
POLL_S = 2.0


@dataclass(frozen=True)
class FinetuneStageResult:
    trained: int
    failed: int
    skipped: int


class StepCounter:
    """A tiny actor that training actors report their optimiser steps to."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def report(self, key: str, step: int) -> None:
        self.steps[key] = step

    def total(self) -> int:
        return sum(self.steps.values())


def lost_unit_row(unit: FinetuneUnit | AlignUnit, reason: str) -> dict[str, Any]:
    """The row of a unit whose actor kept dying: an error, so reruns skip it until
    `--retry-failed` (a unit that runs out of memory would otherwise kill every rerun)."""
    return {**unit_row(unit), "status": "error", "error": f"ActorDied: {reason}"}


def planned_steps(unit: FinetuneUnit | AlignUnit) -> int:
    return math.ceil(len(unit.examples) / unit.train.batch_size) * unit.train.epochs


def group_key(unit: FinetuneUnit) -> tuple[object, ...] | None:
    """What units must share to train in one loop (grouped.py); None: this one trains alone."""
    if unit.lora.dropout:
        return None  # dropout draws would differ from the ones training alone makes
    lora = unit.lora
    return (unit.model, lora.r, frozenset(lora.target_modules), unit.train.mixed_precision)


def form_groups(
    units: list[FinetuneUnit], group_size: int, num_actors: int = 1
) -> list[tuple[FinetuneUnit, ...]]:
    """Units that can share a loop, in groups of at most `group_size` (smaller when that keeps
    `num_actors` actors busy); the others alone. Groups keep the units' order."""
    by_key: dict[object, list[FinetuneUnit]] = {}
    for unit in units:
        key = group_key(unit)
        by_key.setdefault(key if key is not None else unit.key, []).append(unit)
    groups: list[tuple[FinetuneUnit, ...]] = []
    for members in by_key.values():
        size = max(1, min(group_size, math.ceil(len(members) / num_actors)))
        groups += [tuple(members[i : i + size]) for i in range(0, len(members), size)]
    position = {id(unit): i for i, unit in enumerate(units)}
    return sorted(groups, key=lambda group: position[id(group[0])])


def plan_units(plan: Plan) -> dict[str, FinetuneUnit]:
    """The plan's fine-tunes by key, each once, in plan order."""
    return {unit.key: unit for unit in plan.finetunes}


def pending_groups(
    planned: list[FinetuneUnit], pending: set[str], group_size: int, num_actors: int
) -> list[tuple[FinetuneUnit, ...]]:
    """The groups to train now: formed from every planned unit, done or not, then narrowed to
    the pending ones. A group's rows land together (FineTuner.train_group returns them at
    once), so a run stopped mid-group finds that whole group pending and trains the very same
    group again: its adapters come out as an uninterrupted run's (bit for bit on the same
    machine). Only a group some of whose units failed (their rows are errors) is smaller on
    `--retry-failed`."""
    groups = [
        tuple(unit for unit in group if unit.key in pending)
        for group in form_groups(planned, group_size, num_actors)
    ]
    return [group for group in groups if group]


def pending_finetunes(
    plan: Plan, store: RunStore, retry_failed: bool = False
) -> tuple[list[FinetuneUnit], int]:
    """Units not yet trained (deduplicated by key), and how many are already done."""
    ok = store.finetunes.done_keys({"ok"})
    failed = store.finetunes.done_keys({"error"})
    unique = plan_units(plan)
    pending = [
        unit
        for key, unit in unique.items()
        if key not in ok and (retry_failed or key not in failed)
    ]
    return pending, len(unique) - len(pending)


def pending_alignments(plan: Plan, store: RunStore) -> list[AlignUnit]:
    """Base models whose aligned merge is not built (trained and saved whole) yet."""
    if not plan.alignments:
        return []
    trained = store.finetunes.done_keys({"ok"})
    return [
        unit
        for unit in plan.alignments
        if unit.key not in trained or not store.has_artifact(unit.output_path)
    ]


def run_align_stage(plan: Plan, store: RunStore, progress: Progress) -> int:
    """Build every missing aligned base model (train, merge, save); return how many were built."""
    if not plan.alignments:
        return 0
    pending = pending_alignments(plan, store)
    progress.start(
        ALIGN_STAGE, total=len(plan.alignments), done=len(plan.alignments) - len(pending)
    )
    for unit in pending:
        model = plan.model_spec(unit.model)
        [row] = _train_on_actors(
            plan,
            store,
            progress,
            model.path,  # alignment starts from the base itself, at its revision
            model.revision,
            [(unit,)],
            "align",
            ALIGN_STAGE,
            num_actors=1,
        )
        if row["status"] != "ok":
            raise StageError(
                f"models: alignment of {unit.model!r} failed "
                f"({row['error'].splitlines()[0]}); every comparison needs it, so the run stops"
            )
    progress.finish(ALIGN_STAGE)
    return len(pending)


def run_finetune_stage(
    plan: Plan, store: RunStore, progress: Progress, retry_failed: bool = False
) -> FinetuneStageResult:
    """Train every missing adapter; each finished adapter's row is written at once."""
    pending, skipped = pending_finetunes(plan, store, retry_failed)
    progress.start(STAGE, total=len(pending) + skipped, done=skipped)
    rows: list[dict[str, Any]] = []
    # API models train at their provider, from a thread of this process beside local training:
    # no actor, no GPU.
    from ftsafe_ray.finetune.api_stage import api_units, start_api_finetunes

    remote = api_units(plan, pending)
    api_run = start_api_finetunes(plan, store, progress, remote, STAGE)
    remote_keys = {unit.key for unit in remote}
    local = [unit for unit in pending if unit.key not in remote_keys]
    resources = plan.spec.finetune_resources
    planned = list(plan_units(plan).values())
    for model_name in dict.fromkeys(unit.model for unit in local):
        groups = pending_groups(
            [unit for unit in planned if unit.model == model_name],
            {unit.key for unit in local},
            resources.group_size,
            resources.num_actors,
        )
        rows += _train_on_actors(
            plan,
            store,
            progress,
            plan.model_path(model_name),
            plan.model_revision(model_name),
            groups,
            "train",
            STAGE,
            num_actors=resources.num_actors,
        )
    if api_run is not None:
        rows += api_run.result()
    progress.finish(STAGE)
    failed = sum(row["status"] != "ok" for row in rows)
    return FinetuneStageResult(trained=len(rows) - failed, failed=failed, skipped=skipped)


def _train_on_actors(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    model_path: str,
    revision: str | None,
    groups: list[tuple[Any, ...]],
    method: str,
    stage: str,
    num_actors: int,
) -> list[dict[str, Any]]:
    """Run `method` for each unit on a pool of FineTuner actors, a group of several units in one
    `train_group` call; store each row as it lands. A group whose actor dies is redone once
    whole, then each of its units gets a lost row."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ftsafe_ray.actor_pool import PoolSettings, run_on_actors
    from ftsafe_ray.finetune.actor import FineTuner
    from ftsafe_ray.models.resolve import torch_threads

    resources = plan.spec.finetune_resources
    units = [unit for group in groups for unit in group]
    dtype = plan.model_spec(units[0].model).dtype
    actor_class = ray.remote(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
    )(FineTuner)
    # On the driver's node: a worker node lost mid-run must not take the progress with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    counter_class: Any = ray.remote(num_cpus=0)(StepCounter)  # type: ignore[attr-defined]
    counter: Any = counter_class.options(scheduling_strategy=here).remote()
    progress.start(STEPS, total=sum(planned_steps(unit) for unit in units))
    steps_seen = 0
    rows: list[dict[str, Any]] = []

    def make_actor() -> Any:
        return actor_class.remote(model_path, dtype, torch_threads(resources.num_cpus), revision)

    def submit(actor: Any, group: tuple[Any, ...]) -> Any:
        if len(group) == 1:
            return getattr(actor, method).remote(
                group[0], store.artifact(group[0].output_path), counter
            )
        dirs = [store.artifact(unit.output_path) for unit in group]
        return actor.train_group.remote(list(group), dirs, counter)

    def poll() -> None:
        nonlocal steps_seen, counter
        if counter is None:
            return
        try:
            steps_now = ray.get(counter.total.remote())
        except ray.exceptions.RayActorError:
            counter = None  # the step bar stops; the units carry on (their rows still land)
            return
        progress.advance(STEPS, steps_now - steps_seen)
        steps_seen = steps_now

    def store_rows(group: tuple[Any, ...], result: dict[str, Any] | list[dict[str, Any]]) -> None:
        landed = result if isinstance(result, list) else [result]
        store.finetunes.write(landed)
        rows.extend(landed)
        for row in landed:
            if row["status"] != "ok":
                progress.log(f"{stage} {row['arm']} failed: {row['error'].splitlines()[0]}")
            progress.advance(stage)

    def lost(group: tuple[Any, ...], reason: str) -> None:
        store_rows(group, [lost_unit_row(unit, reason) for unit in group])

    try:
        run_on_actors(
            make_actor,
            groups,
            submit,
            store_rows,
            lost,
            PoolSettings(num_actors=num_actors, poll_s=POLL_S),
            on_poll=poll,
        )
    finally:
        if counter is not None:
            ray.kill(counter)
    progress.finish(STEPS)
    return rows
