"""A generation batch whose actor dies on every try: stored as error rows, not judged, not
redone on a plain rerun, redone by --retry-failed.

The generate stage runs for real on real Ray; only the generator actor is a stand-in (it echoes,
or SIGKILLs its own process on a prompt marked as poison), so the death is real and
deterministic.
"""

from __future__ import annotations

import os
import signal

import pytest

from ftsafe_ray.generate import stage as generate_stage
from ftsafe_ray.generate.requests import GenerationRequest, GenerationResult
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.report.scored_rows import scored_rows
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark
from tests.fixtures.processes import kill_first_titled


class EchoGenerator:
    """Answers each prompt with a placeholder; dies (SIGKILL) on a prompt containing POISON."""

    def __init__(self, poison: str | None) -> None:
        self.poison = poison

    def generate(self, requests: list[GenerationRequest], *_: object) -> list[GenerationResult]:
        for request in requests:
            if self.poison and self.poison in request.messages[-1]["content"]:
                os.kill(os.getpid(), signal.SIGKILL)
        return [
            GenerationResult(r.request_id, "placeholder answer", 3, 2, "stop") for r in requests
        ]


@pytest.fixture
def generator(monkeypatch, ray_local):
    """Replace the stage's generator factory; returns a setter for the poison and a count of
    actors started."""
    actor_class = ray_local.remote(num_cpus=0, max_restarts=0)(EchoGenerator)
    state: dict[str, object] = {"poison": None, "made": 0}

    def factory(plan, model_name):
        def make_actor():
            state["made"] = int(state["made"]) + 1  # type: ignore[call-overload]
            return actor_class.remote(state["poison"])

        return make_actor

    monkeypatch.setattr(generate_stage, "_generator_factory", factory)
    return state


@pytest.mark.reliability(
    fault="A generation batch that kills its generator actor on every try (out of memory)",
    outcome="stored as error rows after two tries; not judged; a rerun skips them, "
    "--retry-failed redoes them",
)
def test_a_batch_that_kills_its_generator_is_stored_as_errors(tmp_path, generator):
    write_benchmark(
        tmp_path / "b.jsonl",
        [("c", f"placeholder request {i}") for i in range(3)] + [("c", "POISON request")],
    )
    spec = parse_campaign(
        {
            "name": "lost",
            "output_dir": "run",
            "models": [{"name": "m", "path": "/nonexistent/model"}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            "generation": {"batch_size": 1, "num_actors": 1, "check_adapters": False},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()

    generator["poison"] = "POISON"
    result = generate_stage.run_generate_stage(plan, store, PlainProgress())
    assert result.generated == 3  # answers; the error row is not one
    rows = {row["prompt"]: row for row in store.generations.rows()}
    assert rows["POISON request"]["status"] == "error"
    assert "died" in rows["POISON request"]["error"]
    assert rows["POISON request"]["response"] is None
    assert {rows[f"placeholder request {i}"]["status"] for i in range(3)} == {"ok"}
    assert store.answered_keys() == {row["key"] for row in rows.values() if row["status"] == "ok"}
    made = generator["made"]

    # Not judged: the judge stage's inputs leave the error out; the report counts the unit
    # as planned but unanswered.
    from ftsafe_ray.judge.stage import plan_generations

    assert {row["prompt"] for row in plan_generations(plan, store)} == {
        f"placeholder request {i}" for i in range(3)
    }
    scored = {
        row["generation_key"]: row for row in scored_rows(store, None, {}, plan.unit_labels())
    }
    assert not scored[rows["POISON request"]["key"]]["answered"]

    # A plain rerun does not try the repeatable failure again.
    again = generate_stage.run_generate_stage(plan, store, PlainProgress())
    assert again.generated == 0 and generator["made"] == made

    # --retry-failed redoes only the error, which now succeeds and wins over the error row.
    generator["poison"] = None
    retried = generate_stage.run_generate_stage(plan, store, PlainProgress(), retry_failed=True)
    assert retried.generated == 1
    assert store.failed_generation_keys() == set()
    assert len(store.answered_keys()) == 4


@pytest.mark.slow
@pytest.mark.reliability(
    fault="The Generator process (real model, real backend) killed by PID mid-generation",
    outcome="a new generator replaces it, its batch is redone once, every answer lands",
)
def test_a_generator_killed_mid_batch_is_replaced_and_its_batch_redone(
    tmp_path, tiny_model_dir, ray_local
):
    import threading

    write_benchmark(tmp_path / "b.jsonl", [("c", f"placeholder ask {i}") for i in range(16)])
    spec = parse_campaign(
        {
            "name": "killed",
            "output_dir": "run",
            "models": [{"name": "m", "path": str(tiny_model_dir)}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            # One long batch, so the generator is surely mid-batch when it is found.
            "sampling": {"max_new_tokens": 256},
            "generation": {"batch_size": 16, "num_actors": 1, "num_cpus": 1},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    killed: list[int] = []

    killer = threading.Thread(
        target=kill_first_titled, args=("ray::Generator.generate", killed, 120.0, 0.02)
    )
    killer.start()
    result = generate_stage.run_generate_stage(plan, store, PlainProgress())
    killer.join()
    assert killed, "the Generator process was never seen generating"
    assert result.generated == 16
    rows = store.generations.rows()
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert all(r["response"] is not None for r in rows)


class LandingFineTunes:
    """Stands in for the running fine-tune stage: each time the generate stage asks whether
    it is done, one more adapter lands in the store; done once all have."""

    def __init__(self, plan, store) -> None:
        self.plan, self.store = plan, store
        self.waiting = list(plan.finetunes)

    def done(self) -> bool:
        if not self.waiting:
            return True
        unit = self.waiting.pop(0)
        self.store.finetunes.write([{"key": unit.key, "status": "ok"}])
        return False


def test_generator_actors_live_for_the_whole_stage_across_rounds(tmp_path, generator, monkeypatch):
    from tests.fixtures.campaign_files import write_chats

    write_chats(tmp_path / "d.jsonl", [(f"placeholder task {i}", "fine") for i in range(2)])
    write_benchmark(tmp_path / "b.jsonl", [("c", f"placeholder request {i}") for i in range(8)])
    spec = parse_campaign(
        {
            "name": "rounds",
            "output_dir": "run",
            "models": [{"name": "m", "path": "/nonexistent/model"}],
            "datasets": [{"name": "d", "source": "d.jsonl"}],
            "finetunes": [{"name": "a", "dataset": "d", "sizes": [1, 2]}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            "generation": {"batch_size": 1, "num_actors": 2, "check_adapters": False},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    progress = PlainProgress()
    rounds: list[int] = []
    real_round = generate_stage._generate_round

    def counted_round(*args, **kwargs):
        rounds.append(len(args[3]))
        return real_round(*args, **kwargs)

    monkeypatch.setattr(generate_stage, "_generate_round", counted_round)
    result = generate_stage.run_generate_stage(
        plan, store, progress, upstream=LandingFineTunes(plan, store)
    )
    assert result.generated == 24 and len(store.generations.rows()) == 24
    assert rounds == [16, 8]  # base + the first adapter, then the second adapter's prompts
    # Two actors, started once for the whole stage: no engine start per round.
    assert generator["made"] == 2
