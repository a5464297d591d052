"""The actor pool on real Ray: a dead actor is replaced, its items redone once, else lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ftsafe_ray.actor_pool import MAX_TRIES, PoolSettings, run_on_actors
from ftsafe_ray.errors import SpecError
from tests.fixtures.processes import kill_first_titled


class Worker:
    """Doubles numbers; kills its own process (SIGKILL) on items listed in a marker file."""

    def __init__(self, deaths_dir: str) -> None:
        self.deaths = Path(deaths_dir)

    def work(self, item: int) -> int:
        marker = self.deaths / str(item)
        if marker.exists():
            tries = int(marker.read_text() or 0)
            if tries > 0:
                marker.write_text(str(tries - 1))
                os.kill(os.getpid(), signal.SIGKILL)
        if item < 0:
            raise SpecError(f"item {item}: negative; use a positive number")
        return 2 * item


def run(ray, tmp_path: Path, items, deaths: dict[int, int], **settings):
    for item, times in deaths.items():
        (tmp_path / str(item)).write_text(str(times))
    actor_class = ray.remote(num_cpus=0, max_restarts=0)(Worker)
    results: dict[int, int] = {}
    lost: dict[int, str] = {}
    made = []

    def make_actor():
        made.append(actor_class.remote(str(tmp_path)))
        return made[-1]

    run_on_actors(
        make_actor,
        items,
        lambda actor, item: actor.work.remote(item),
        results.__setitem__,
        lost.__setitem__,
        PoolSettings(**{"num_actors": 2, **settings}),
    )
    return results, lost, len(made)


@pytest.mark.reliability(
    fault="A worker actor's process killed (SIGKILL) while it holds work",
    outcome="a new actor replaces it (bounded) and its items are redone once",
)
def test_a_dead_actor_is_replaced_and_its_item_redone(ray_local, tmp_path):
    results, lost, made = run(ray_local, tmp_path, list(range(6)), {3: 1})
    assert results == {i: 2 * i for i in range(6)} and lost == {}
    assert made == 3  # two actors, one replacement


@pytest.mark.reliability(
    fault="A unit that kills its actor every time (out of memory)",
    outcome="redone once alone, then stored as an error row (fine-tune or generation); "
    "the rest carry on",
)
def test_an_item_that_kills_every_actor_is_lost_and_the_rest_carry_on(ray_local, tmp_path):
    results, lost, made = run(ray_local, tmp_path, list(range(5)), {2: 99}, in_flight_per_actor=2)
    assert set(results) == {0, 1, 3, 4} and set(lost) == {2}
    assert f"died on each of {MAX_TRIES} tries" in lost[2]
    assert made == 2 + MAX_TRIES


@pytest.mark.reliability(
    fault="Every actor replacement used up",
    outcome="the remaining items are reported lost, not waited for",
)
def test_no_actor_left_loses_the_remaining_items(ray_local, tmp_path):
    results, lost, _ = run(ray_local, tmp_path, [1, 2, 3], {1: 99}, num_actors=1, max_restarts=1)
    assert results == {}
    assert set(lost) == {1, 2, 3}
    assert "no actor left" in lost[2]


def test_a_user_error_from_a_task_is_raised_as_itself(ray_local, tmp_path):
    with pytest.raises(SpecError, match="item -1: negative"):
        run(ray_local, tmp_path, [1, -1, 2], {})


@pytest.mark.reliability(
    fault="The FineTuner process killed by PID mid-training",
    outcome="restarted, the unit retrained once, every adapter lands",
)
@pytest.mark.slow
def test_a_fine_tune_actor_killed_mid_unit_is_restarted_and_the_unit_redone(
    ray_local, tiny_model_dir, tmp_path
):
    """The real fine-tune stage: SIGKILL the FineTuner process while it trains; both adapters
    still land, one of them trained twice."""
    import threading

    from ftsafe_ray.finetune.stage import run_finetune_stage
    from ftsafe_ray.plan import build_plan
    from ftsafe_ray.progress import PlainProgress
    from ftsafe_ray.spec import parse_campaign
    from ftsafe_ray.store import RunStore
    from tests.fixtures.campaign_files import write_benchmark, write_chats

    write_chats(tmp_path / "d.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_benchmark(tmp_path / "b.jsonl", [("c", "placeholder request")])
    train = {"epochs": 30, "batch_size": 2, "micro_batch_size": 2, "max_length": 64}
    spec = parse_campaign(
        {
            "name": "kill",
            "output_dir": "run",
            "models": [{"name": "m", "path": str(tiny_model_dir)}],
            "datasets": [{"name": "d", "source": "d.jsonl"}],
            "finetunes": [{"name": "a", "dataset": "d", "sizes": [2, 4], "train": train}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            "finetune_resources": {"num_actors": 1, "num_cpus": 1},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir)
    store.create()
    killed: list[int] = []

    killer = threading.Thread(target=kill_first_titled, args=("ray::FineTuner.train", killed))
    killer.start()
    result = run_finetune_stage(plan, store, PlainProgress())
    killer.join()
    assert killed, "the FineTuner process was never seen training"
    assert (result.trained, result.failed) == (2, 0)
    rows = store.finetunes.rows()
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2
    for unit in plan.finetunes:
        assert (store.adapter_dir(unit.key) / "adapter_model.safetensors").is_file()


def test_a_lost_fine_tune_is_stored_as_an_error_that_reruns_skip(tmp_path):
    from ftsafe_ray.finetune.stage import lost_unit_row, pending_finetunes
    from ftsafe_ray.plan import build_plan
    from ftsafe_ray.spec import parse_campaign
    from ftsafe_ray.store import RunStore
    from tests.fixtures.campaign_files import write_benchmark, write_chats

    write_chats(tmp_path / "d.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_benchmark(tmp_path / "b.jsonl", [("c", "placeholder request")])
    spec = parse_campaign(
        {
            "name": "lost",
            "output_dir": "run",
            "models": [{"name": "m", "path": "/nonexistent/model"}],
            "datasets": [{"name": "d", "source": "d.jsonl"}],
            "finetunes": [{"name": "a", "dataset": "d", "sizes": [2]}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir)
    (unit,) = plan.finetunes
    store.finetunes.write([lost_unit_row(unit, "its actor died on each of 2 tries (OOM)")])
    (row,) = store.finetunes.rows()
    assert (row["key"], row["status"], row["arm"]) == (unit.key, "error", "a")
    assert row["error"].startswith("ActorDied: its actor died")
    assert pending_finetunes(plan, store) == ([], 1)
    assert pending_finetunes(plan, store, retry_failed=True)[0] == [unit]
