"""Fine-tune stage: send pending units to FineTuner actors, store each row as it finishes."""

from __future__ import annotations

from dataclasses import dataclass

from ftsafe_ray.plan import FinetuneUnit, Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.store import RunStore

STAGE = "fine-tune"


@dataclass(frozen=True)
class FinetuneStageResult:
    trained: int
    failed: int
    skipped: int


def pending_finetunes(
    plan: Plan, store: RunStore, retry_failed: bool = False
) -> tuple[list[FinetuneUnit], int]:
    """Units not yet trained (deduplicated by key), and how many are already done."""
    ok = store.finetunes.done_keys({"ok"})
    failed = store.finetunes.done_keys({"error"})
    unique = {unit.key: unit for unit in plan.finetunes}
    pending = [
        unit
        for key, unit in unique.items()
        if key not in ok and (retry_failed or key not in failed)
    ]
    return pending, len(unique) - len(pending)


def run_finetune_stage(
    plan: Plan, store: RunStore, progress: Progress, retry_failed: bool = False
) -> FinetuneStageResult:
    """Train every missing adapter; each finished adapter's row is written at once."""
    import ray

    from ftsafe_ray.finetune.actor import FineTuner

    pending, skipped = pending_finetunes(plan, store, retry_failed)
    progress.start(STAGE, total=len(pending) + skipped, done=skipped)
    trained = failed = 0
    resources = plan.spec.finetune_resources
    for model_name in dict.fromkeys(unit.model for unit in pending):
        model = plan.model_spec(model_name)
        units = [unit for unit in pending if unit.model == model_name]
        actor_class = ray.remote(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
        )(FineTuner)
        actors = [
            actor_class.remote(
                plan.model_path(model_name), model.dtype, _threads(resources.num_cpus)
            )
            for _ in range(min(resources.num_actors, len(units)))
        ]
        in_flight = {}
        queue = list(units)
        try:
            for actor in actors:
                if queue:
                    unit = queue.pop(0)
                    ref = actor.train.remote(unit, str(store.adapter_dir(unit.key)))
                    in_flight[ref] = actor
            while in_flight:
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                actor = in_flight.pop(ref)
                row = ray.get(ref)
                store.finetunes.write([row])
                if row["status"] == "ok":
                    trained += 1
                else:
                    failed += 1
                    progress.log(f"fine-tune {row['arm']} failed: {row['error'].splitlines()[0]}")
                progress.advance(STAGE)
                if queue:
                    unit = queue.pop(0)
                    ref = actor.train.remote(unit, str(store.adapter_dir(unit.key)))
                    in_flight[ref] = actor
        finally:
            for actor in actors:
                ray.kill(actor)
    progress.finish(STAGE)
    return FinetuneStageResult(trained=trained, failed=failed, skipped=skipped)


def _threads(num_cpus: float) -> int | None:
    """Ray pins OMP threads to the actor's CPU count; torch should use exactly those."""
    return max(1, int(num_cpus)) if num_cpus else None


ALIGN_STAGE = "align"


def run_align_stage(plan: Plan, store: RunStore, progress: Progress) -> int:
    """Build every missing aligned base model (train, merge, save); return how many were built."""
    import ray

    from ftsafe_ray.errors import StageError
    from ftsafe_ray.finetune.actor import FineTuner

    trained = store.finetunes.done_keys({"ok"})
    pending = [
        unit
        for unit in plan.alignments
        if unit.key not in trained or not (plan.run_dir / unit.model_dir).is_dir()
    ]
    if not plan.alignments:
        return 0
    progress.start(
        ALIGN_STAGE, total=len(plan.alignments), done=len(plan.alignments) - len(pending)
    )
    resources = plan.spec.finetune_resources
    for unit in pending:
        model = plan.model_spec(unit.model)
        actor = ray.remote(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
        )(FineTuner).remote(model.path, model.dtype, _threads(resources.num_cpus))
        try:
            row = ray.get(actor.align.remote(unit, str(plan.run_dir / unit.model_dir)))
        finally:
            ray.kill(actor)
        store.finetunes.write([row])
        progress.advance(ALIGN_STAGE)
        if row["status"] != "ok":
            raise StageError(
                f"models: alignment of {unit.model!r} failed "
                f"({row['error'].splitlines()[0]}); every comparison needs it, so the run stops"
            )
    progress.finish(ALIGN_STAGE)
    return len(pending)
