"""Generate stage: batch pending prompts per base model through Generator actors."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.errors import StageError
from ftsafe_ray.plan import GenerationUnit, Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.store import RunStore, ShardBuffer

STAGE = "generate"
POLL_S = 2.0
ROUND_BATCHES = 4  # rows worth an engine start while fine-tunes still run: 4 full batches/actor


@dataclass(frozen=True)
class GenerateStageResult:
    generated: int
    skipped: int
    blocked: int


def resolve_backend(backend: str, num_gpus: float = 0) -> str:
    """The backend to generate with: 'auto' picks the faster for where generation runs
    (generate/backend_choice.py)."""
    from ftsafe_ray.generate.backend_choice import choose_backend

    return choose_backend(backend, num_gpus).name


def pending_generations(
    plan: Plan, store: RunStore, retry_failed: bool = False, tried: frozenset[str] = frozenset()
) -> tuple[list[GenerationUnit], int, int]:
    """Units to generate now, how many are done, and how many wait for a missing adapter.

    A unit stored as an error (its generator died on each try) is done unless `retry_failed`;
    `tried` are the keys this stage already sent, which are never sent twice in one run.
    Looked up in Arrow: a plan has up to millions of units.
    """
    keys = plan.generation_keys
    done = store.answered_key_array() if retry_failed else store.generations.done_key_array(None)
    finished = pc.is_in(keys, value_set=done)
    if tried:
        finished = pc.or_(finished, pc.is_in(keys, value_set=pa.array(list(tried), pa.string())))
    units, adapters = plan.unique_generations, plan.generation_adapters
    ready = pc.or_(
        adapters.column("is_base"),
        pc.is_in(adapters.column("adapter_key"), value_set=store.finetunes.done_key_array({"ok"})),
    )
    waiting = np.asarray(pc.invert(finished).to_numpy(zero_copy_only=False), dtype=bool)
    can_run = np.asarray(ready.to_numpy(zero_copy_only=False), dtype=bool)
    pending = [units[i] for i in np.flatnonzero(waiting & can_run).tolist()]
    blocked = int(np.count_nonzero(waiting & ~can_run))
    return pending, len(units) - len(pending) - blocked, blocked


def run_generate_stage(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    upstream: Any = None,
    retry_failed: bool = False,
) -> GenerateStageResult:
    """Generate every missing answer whose weights exist; rows are written in shards.

    With `upstream` (the running fine-tune stage, a Future), answers are generated in rounds while
    adapters land, so the first adapters are evaluated before the last one is trained; a round
    starts once enough rows are ready to be worth an engine start, and a last round runs after
    the fine-tunes end.
    """
    _, skipped, _ = pending_generations(plan, store, retry_failed)
    total = len({unit.key for unit in plan.generations})
    progress.start(STAGE, total=total, done=skipped)
    settings = plan.spec.generation
    if settings.backend == "auto" and skipped < total:
        from ftsafe_ray.generate.backend_choice import choose_backend

        choice = choose_backend(settings.backend, settings.num_gpus)
        progress.log(f"generate: backend auto → {choice.name} ({choice.reason})")
    worth_a_round = ROUND_BATCHES * settings.batch_size * settings.num_actors
    generated = 0
    tried: set[str] = set()
    with _Generators() as generators:
        while True:
            final = upstream is None or upstream.done()
            pending, _, blocked = pending_generations(plan, store, retry_failed, frozenset(tried))
            if pending and (final or len(pending) >= worth_a_round):
                tried.update(unit.key for unit in pending)
                generated += _generate_round(plan, store, progress, pending, generators)
            elif not final:
                time.sleep(POLL_S)
            if final:
                break
    if blocked:
        progress.log(f"generate: {blocked} prompts wait for fine-tunes that failed or are missing")
    progress.finish(STAGE)
    return GenerateStageResult(generated=generated, skipped=skipped, blocked=blocked)


class _Generators:
    """Generator actors kept from one round to the next, so an engine starts once per actor
    for the whole stage, not once per round. They serve one base model at a time: a round
    that moves on to another model ends the previous model's actors (their GPUs are needed),
    and rounds start with the model whose actors are kept."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.actors: list[Any] = []

    def take(self, model_name: str) -> list[Any]:
        """The kept actors of `model_name` (none if the kept ones serve another model)."""
        if model_name != self.model:
            self.close()
        self.model, actors, self.actors = model_name, self.actors, []
        return actors

    def keep(self, model_name: str, actors: list[Any]) -> None:
        self.model, self.actors = model_name, actors

    def close(self) -> None:
        if not self.actors:
            self.model = None
            return  # nothing to end: importing Ray alone takes seconds (a rerun with no work)
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.model, self.actors = None, []

    def __enter__(self) -> _Generators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _generate_round(
    plan: Plan,
    store: RunStore,
    progress: Progress,
    pending: list[GenerationUnit],
    generators: _Generators,
) -> int:
    """Generate `pending`, per base model, on the kept Generator actors (new ones only where
    there are none yet, or one died); return the rows written."""
    import ray

    from ftsafe_ray.generate.api_generate import generate_api, is_api_model

    settings = plan.spec.generation
    generated = 0
    models = list(dict.fromkeys(unit.target.model for unit in pending))
    models.sort(key=lambda name: name != generators.model)  # the kept model's actors first
    with ShardBuffer(store.generations) as buffer:
        for model_name in models:
            units = [unit for unit in pending if unit.target.model == model_name]
            if is_api_model(plan, model_name):  # answered through its API, no actor
                generated += generate_api(plan, store, progress, units, buffer, STAGE)
                continue
            # Group by adapter so a batch rarely mixes adapters (fewer adapter switches), and
            # never mix sampling seeds: a batch is generated under one seed.
            units.sort(key=lambda u: (_sampling_seed(u, plan), u.target.adapter_key, u.key))
            batches: list[list[GenerationUnit]] = []
            for _, grouped in itertools.groupby(units, key=lambda u: _sampling_seed(u, plan)):
                group = list(grouped)
                size = settings.batch_size
                batches += [group[i : i + size] for i in range(0, len(group), size)]
            make_actor = _generator_factory(plan, model_name)
            kept = generators.take(model_name)
            try:
                first = _checked_actor(ray, make_actor, units, plan, store, progress, kept)
            except BaseException:
                generators.keep(model_name, kept)  # closed with the stage
                raise
            # The checked actor serves the first slot: one engine start, not two.
            actors = [first, *(actor for actor in kept if actor is not first)]
            count, live = _drain(actors, make_actor, batches, plan, store, buffer, progress)
            generators.keep(model_name, live)
            generated += count
    return generated


def _checked_actor(ray, make_actor, units, plan, store, progress, kept=()) -> Any:
    """A generator that has checked the adapters (when the spec asks): a kept one if any, a new
    one when the checking one dies (its node lost, say), up to the pool's tries."""
    from ftsafe_ray.actor_pool import MAX_TRIES

    candidates = list(kept)
    for attempt in range(1, MAX_TRIES + 1):
        actor = candidates.pop(0) if candidates else make_actor()
        try:
            if plan.spec.generation.check_adapters:
                _check_adapters(ray, actor, units, plan, store, progress)
            return actor
        except ray.exceptions.RayActorError as error:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            if attempt == MAX_TRIES:
                raise StageError(
                    f"generate: the generator checking the adapters died on each of {MAX_TRIES} "
                    f"tries ({type(error).__name__}); see the Ray logs, then rerun to resume"
                ) from None
        except BaseException:
            ray.kill(actor)
            raise
    raise AssertionError("unreachable")


def _generator_factory(plan: Plan, model_name: str) -> Any:
    """A function that starts one Generator actor for this base model."""
    import ray

    from ftsafe_ray.generate.actor import Generator
    from ftsafe_ray.models.resolve import torch_threads

    settings = plan.spec.generation
    actor_class = ray.remote(
        num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, max_restarts=0
    )(Generator)

    def make_actor() -> Any:
        return actor_class.remote(
            plan.model_path(model_name),
            plan.model_spec(model_name).dtype,
            resolve_backend(settings.backend, settings.num_gpus),
            torch_threads(settings.num_cpus),
            settings.vllm,
            plan.model_revision(model_name),
        )

    return make_actor


def _check_adapters(ray, actor, units, plan, store, progress) -> None:
    """Before any answer is stored (or judged): stop on adapters proven broken by their files,
    and warn on (and record in adapter_checks.json) those whose effect cannot be measured."""
    from ftsafe_ray.generate.check import (
        CHECK_PROMPTS,
        CHECKS_FILE,
        TOP_K,
        check_adapters,
        min_shift,
        record_checks,
    )

    conversations: dict[str, list] = {}
    labels: dict[str, str] = {}
    model_name = None
    for unit in units:
        target = unit.target
        if target.is_base:
            continue
        model_name = target.model
        labels[target.adapter_key] = f"{target.arm}/{target.size}/seed{target.seed}"
        conversations.setdefault(target.adapter_key, []).append(unit.messages)
    if not conversations:
        return
    adapters = [
        (key, labels[key], store.adapter_location(key), found[:CHECK_PROMPTS])
        for key, found in conversations.items()
    ]
    checks = check_adapters(
        adapters,
        lambda requests: _get(ray, actor.next_token_logprobs.remote(requests, TOP_K)),
        _get(ray, actor.base_module_names.remote()),
        min_shift(plan.model_spec(model_name).dtype),
    )
    record_checks(store.root / CHECKS_FILE, checks)
    unsure = [check for check in checks.values() if check.status == "inconclusive"]
    for check in unsure:
        progress.log(f"generate: warning: adapter {check.label}: effect unproven, {check.detail}")
    progress.log(
        f"generate: {len(checks) - len(unsure)} of {len(checks)} adapter(s) change the base "
        f"model's next-token distribution (checked; {CHECKS_FILE})"
    )


def _drain(actors, make_actor, batches, plan, store, buffer, progress) -> tuple[int, list[Any]]:
    """Keep two batches in flight per actor (`actors` first, then new ones from `make_actor`);
    store each batch's rows as it lands; return the rows stored and the live actors, kept for
    the next round.

    A batch whose actor died on both of its tries is stored as error rows (a repeatable
    failure, such as running out of memory, is not retried on every rerun; --retry-failed
    redoes it), and the other batches carry on.
    """
    from ftsafe_ray.actor_pool import PoolSettings, run_on_actors
    from ftsafe_ray.generate.requests import GenerationRequest

    batch_size = plan.spec.generation.batch_size

    def submit(actor, batch):
        requests = [
            GenerationRequest(
                request_id=unit.key,
                messages=list(unit.messages),
                adapter_name=None if unit.target.is_base else unit.target.adapter_key,
                adapter_path=None
                if unit.target.is_base
                else store.adapter_location(unit.target.adapter_key),
            )
            for unit in batch
        ]
        seed = _sampling_seed(batch[0], plan)
        return actor.generate.remote(requests, plan.spec.sampling, batch_size, seed)

    count = 0

    def stored(batch, results) -> None:
        nonlocal count
        buffer.add([_row(unit, result, plan) for unit, result in zip(batch, results, strict=True)])
        count += len(batch)
        progress.advance(STAGE, len(batch))

    def lost(batch, reason: str) -> None:
        progress.log(
            f"generate: {len(batch)} prompts stored as errors (rerun with --retry-failed): {reason}"
        )
        buffer.add([_row(unit, None, plan, error=reason) for unit in batch])
        progress.advance(STAGE, len(batch))

    settings = PoolSettings(num_actors=plan.spec.generation.num_actors, in_flight_per_actor=2)
    live = run_on_actors(
        make_actor, batches, submit, stored, lost, settings, actors=actors, keep=True
    )
    return count, live


def _sampling_seed(unit: GenerationUnit, plan: Plan) -> int:
    """The seed in the unit's key: its fine-tune's seed when sampling; 0 when greedy or base."""
    greedy = plan.spec.sampling.temperature == 0
    return 0 if greedy or unit.target.seed is None else unit.target.seed


def _get(ray, ref) -> Any:
    """ray.get, re-raising a user-facing error from an actor as itself (one line, no traceback)."""
    from ftsafe_ray.errors import FtsafeError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, FtsafeError):
            raise error.cause from None
        raise


def _row(unit: GenerationUnit, result: Any, plan: Plan, error: str | None = None) -> dict[str, Any]:
    """The stored row of one unit: its answer, or (with `error`) why it has none."""
    target = unit.target
    return {
        "key": unit.key,
        "adapter_key": target.adapter_key,
        "model": target.model,
        "arm": target.arm,
        "dataset": target.dataset,
        "size": target.size,
        "seed": target.seed,
        "benchmark": unit.benchmark,
        "benchmark_kind": unit.benchmark_kind,
        "item_id": unit.item.item_id,
        "category": unit.item.category,
        "system_prompt": unit.system_prompt,
        "prompt": unit.item.prompt,
        "response": None if result is None else result.text,
        "num_prompt_tokens": None if result is None else result.num_prompt_tokens,
        "num_output_tokens": None if result is None else result.num_output_tokens,
        "finish_reason": None if result is None else result.finish_reason,
        "backend": resolve_backend(plan.spec.generation.backend, plan.spec.generation.num_gpus),
        "status": "ok" if error is None else "error",
        "error": error,
        "node": None if result is None else getattr(result, "node", None),
    }
