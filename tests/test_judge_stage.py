"""The judge stage over real Ray and real HTTP: exactly one row per answer, retry-failed,
a verdict cache shared by campaigns, the dollar budget, the Batch API path and the
cluster-wide rate budget with several actors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.judge.batch import STATE_DIR, BatchJudge
from ftsafe_ray.judge.identity import rubric_identity, verdict_key_for
from ftsafe_ray.judge.rubrics import get_rubric
from ftsafe_ray.judge.stage import RubricAccess, run_judge_stage
from ftsafe_ray.judge.strongreject import STRONGREJECT_VERSION
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row
from tests.fixtures.judge_server import (
    hang,
    judge_refusal,
    malformed,
    rate_limited,
    server_error,
    truncated,
    verdict,
)

ANSWERS = [
    "Sure, here it is: placeholder-harmful step-by-step plan.",
    "I'm sorry, but I can't help with that.",
    "Locks are mechanical devices.",
]


def make_plan(tmp_path: Path, judge_url: str, n: int = 12, output_dir: str = "run", **rubric):
    bench = tmp_path / "bench.jsonl"
    if not bench.exists():
        bench.write_text(
            "\n".join(
                json.dumps({"id": f"q{i}", "category": f"cat{i % 2}", "prompt": f"request {i}"})
                for i in range(n)
            )
        )
    judges = rubric.pop("judges", {})
    settings = {
        "enabled": True,
        "base_url": judge_url,
        "model": "test-judge",
        "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
        "max_retries": 2,
        "timeout_s": 5,
        "max_tokens": 64,
        **rubric,
    }
    data = {
        "name": "judge-stage",
        "output_dir": output_dir,
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "benchmarks": [{"name": "b", "source": str(bench)}],
        "judges": {"rubric": settings, **judges},
    }
    (tmp_path / f"{output_dir}.yaml").write_text(yaml.safe_dump(data))
    spec = parse_campaign(data)
    return build_plan(spec, base_dir=tmp_path)


def store_answers(plan) -> RunStore:
    """Stored generations for every unit of the plan, cycling through ANSWERS."""
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    rows = [answer_row(unit, ANSWERS[i % len(ANSWERS)]) for i, unit in enumerate(plan.generations)]
    store.generations.write(rows)
    return store


def request_index(body) -> int | None:
    text = body["messages"][-1]["content"]
    for i in range(100):
        if f"request {i}\n" in text:
            return i
    return None


def scripted_by_request(always_500=frozenset()):
    """Replies chosen by the request's index: 500s for `always_500`, a malformed verdict for
    5, a judge refusal for 8, a 429 on the first try of 10, a slow answer for 11."""
    seen: set[int] = set()

    def reply(body):
        i = request_index(body)
        first = i not in seen
        seen.add(i)
        if i in always_500:
            return server_error()
        special = {5: malformed(), 8: judge_refusal(), 11: hang(0.2)}
        if i == 10 and first:
            return rate_limited("0.01")
        return special.get(i, verdict())

    return reply


def judge(plan, store, server, retry_failed=False, base_dir=None):
    access = RubricAccess(base_url=server.base_url, api_key="test-key")
    return run_judge_stage(
        plan, store, PlainProgress(interval_s=60), access, retry_failed, base_dir
    )


def rubric_rows(store):
    return [r for r in store.judgments.rows() if r["judge"] == "rubric"]


def raw_rubric_row_count(store) -> int:
    """Rows on disk, before the latest-per-key read: duplicates would show here."""
    files = sorted((store.root / "judgments").glob("part-*.parquet"))
    return sum(
        sum(1 for j in pq.read_table(f, columns=["judge"]).column("judge").to_pylist()
            if j == "rubric")
        for f in files
    )  # fmt: skip


def stored_requests(plan, store) -> list:
    """One rubric request per stored answer, keyed as the judge stage keys it."""
    from ftsafe_ray.judge.rubric_client import JudgeRequest

    identity = rubric_identity(plan.spec.judges.rubric)
    return [
        JudgeRequest(verdict_key_for(identity, g), g["prompt"], g["response"])
        for g in store.generations.rows()
    ]


def batch_judge(plan, store, judge_url) -> BatchJudge:
    """A Batch API judge as a driver would make it, keeping its jobs in the run directory."""
    return BatchJudge(
        plan.spec.judges.rubric, "k", judge_url, store.root / STATE_DIR, get_rubric("hexphi")
    )


def test_every_answer_ends_in_one_row_and_retry_failed_redoes_only_errors(
    tmp_path, judge_server, ray_local
):
    plan = make_plan(tmp_path, judge_server.base_url, n=12, num_actors=2, max_concurrency=3)
    store = store_answers(plan)
    judge_server.set_behaviour(scripted_by_request(always_500={3, 7}))
    result = judge(plan, store, judge_server)
    rows = rubric_rows(store)
    assert result.rubric_new == 12 == len(rows) == raw_rubric_row_count(store)
    statuses = [r["status"] for r in rows]
    assert statuses.count("unparseable") == 1 and statuses.count("judge_refused") == 1
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2
    assert all(r["attempts"] == 3 and "500" in r["error"] for r in errors)
    assert sum(r["attempts"] for r in rows) + 1 == len(judge_server.chat_requests)
    assert all(r["prompt_tokens"] and r["completion_tokens"] for r in rows if r["raw"])

    judge_server.reset()
    assert judge(plan, store, judge_server).rubric_new == 0
    assert judge_server.chat_requests == []  # errors wait for --retry-failed

    again = judge(plan, store, judge_server, retry_failed=True)
    assert again.rubric_new == len(errors)
    assert len(judge_server.chat_requests) == len(errors) + 1  # + the endpoint check
    rows = rubric_rows(store)
    assert len(rows) == 12 and [r["status"] for r in rows].count("error") == 0


def test_truncated_verdicts_are_final_rows_and_a_rerun_pays_nothing(
    tmp_path, judge_server, ray_local
):
    plan = make_plan(tmp_path, judge_server.base_url, n=3)
    store = store_answers(plan)
    judge_server.set_behaviour(truncated())
    assert judge(plan, store, judge_server).rubric_new == 3
    rows = rubric_rows(store)
    assert [(r["status"], r["score"], r["attempts"]) for r in rows] == [("truncated", None, 2)] * 3
    sent = [r.body["max_tokens"] for r in judge_server.chat_requests]
    verdicts = [tokens for tokens in sent if tokens != 5]  # all but the endpoint check
    assert sorted(verdicts) == [64, 64, 64, 128, 128, 128]

    judge_server.reset()
    assert judge(plan, store, judge_server).rubric_new == 0
    assert judge(plan, store, judge_server, retry_failed=True).rubric_new == 0
    assert judge_server.chat_requests == []


def test_batch_mode_stores_truncated_replies_flagged_without_a_second_batch(tmp_path, judge_server):
    plan = make_plan(tmp_path, judge_server.base_url, n=3, mode="batch", batch_poll_s=0.01)
    store = store_answers(plan)
    judge_server.set_behaviour(truncated())
    assert judge(plan, store, judge_server).rubric_new == 3
    rows = rubric_rows(store)
    assert [(r["status"], r["score"]) for r in rows] == [("truncated", None)] * 3
    assert all(r["raw"] == truncated().content and "max_tokens (64)" in r["reason"] for r in rows)
    assert len(judge_server.batches) == 1


def test_campaigns_with_different_run_dirs_share_a_verdict_cache(tmp_path, judge_server, ray_local):
    shared = {"judges": {"cache_dir": "verdict-cache"}}
    first = make_plan(tmp_path, judge_server.base_url, n=6, output_dir="run-a", **shared)
    store_a = store_answers(first)
    assert judge(first, store_a, judge_server, base_dir=tmp_path).rubric_new == 6
    assert len(judge_server.chat_requests) == 7  # six verdicts and the endpoint check

    judge_server.reset()
    second = make_plan(tmp_path, judge_server.base_url, n=6, output_dir="run-b", **shared)
    store_b = store_answers(second)
    result = judge(second, store_b, judge_server, base_dir=tmp_path)
    assert (result.rubric_new, result.rubric_from_cache) == (0, 6)
    assert judge_server.chat_requests == []  # the same keys are never paid twice
    copied = rubric_rows(store_b)
    assert len(copied) == 6 and all(r["cost_usd"] == 0.0 for r in copied)
    assert {r["generation_key"] for r in copied} == {u.key for u in second.generations}

    # Pointing a third campaign straight at the first one's judgments also works.
    third = make_plan(
        tmp_path, judge_server.base_url, n=6, output_dir="run-c",
        judges={"cache_dir": "run-a/judgments"},
    )  # fmt: skip
    assert judge(third, store_answers(third), judge_server, base_dir=tmp_path).rubric_new == 0
    assert judge_server.chat_requests == []


def test_budget_stops_new_calls_and_a_bigger_budget_continues(tmp_path, judge_server, ray_local):
    from ftsafe_ray.judge.cost import cost_usd

    price = {"input_per_million": 1000.0, "output_per_million": 2000.0}
    judges = {"prices": {"test-judge": price}}
    plan = make_plan(tmp_path, judge_server.base_url, n=12, budget_usd=3.0, judges=judges)
    store = store_answers(plan)
    result = judge(plan, store, judge_server)
    rows = rubric_rows(store)
    assert 1 < result.rubric_new == len(rows) < 12
    assert result.rubric_left_by_budget == 12 - len(rows)
    assert "budget_usd" in result.rubric_skipped_reason
    spent = sum(r["cost_usd"] for r in rows)
    assert spent <= 3.0
    spec_price = plan.spec.judges.prices["test-judge"]
    for r in rows:
        assert r["cost_usd"] == pytest.approx(
            cost_usd(spec_price, r["prompt_tokens"], r["completion_tokens"], batch=False)
        )

    judge_server.reset()
    assert judge(plan, store, judge_server).rubric_new == 0  # same budget: nothing more
    assert len(judge_server.chat_requests) == 0

    bigger = make_plan(tmp_path, judge_server.base_url, n=12, budget_usd=100.0, judges=judges)
    more = judge(bigger, store, judge_server)
    assert more.rubric_new == 12 - len(rows) and more.rubric_left_by_budget == 0
    assert len(rubric_rows(store)) == 12


def test_batch_mode_submits_once_and_resumes_after_a_driver_restart(tmp_path, judge_server):
    plan = make_plan(tmp_path, judge_server.base_url, n=9, mode="batch", batch_poll_s=0.01)
    store = store_answers(plan)
    judge_server.set_behaviour(scripted_by_request(always_500={3}))
    # A first driver submits the job, then dies before collecting it.
    requests = stored_requests(plan, store)
    first = batch_judge(plan, store, judge_server.base_url)
    [job] = first.submit(requests[:5])
    first.close()
    assert job.batch_id in judge_server.batches

    result = judge(plan, store, judge_server)
    assert result.rubric_new == 9
    assert len(judge_server.batches) == 2  # the old job was collected, not resubmitted
    assert judge_server.chat_requests == []  # nothing went through the online path
    rows = rubric_rows(store)
    assert len(rows) == 9 == raw_rubric_row_count(store)
    by_key = {r["key"]: r for r in rows}
    assert {r.key for r in requests} == set(by_key)
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("error") == 1 and statuses.count("unparseable") == 1
    [error] = [r for r in rows if r["status"] == "error"]
    assert "HTTP 500" in error["error"]
    states = [json.loads(p.read_text()) for p in (store.root / STATE_DIR).glob("*.json")]
    assert sorted(s["status"] for s in states) == ["ingested", "ingested"]

    judge_server.reset()
    assert judge(plan, store, judge_server).rubric_new == 0
    assert len(judge_server.batches) == 2


def test_strongreject_rubric_stores_sub_scores(tmp_path, judge_server, ray_local):
    plan = make_plan(tmp_path, judge_server.base_url, n=3, rubric="strongreject")
    store = store_answers(plan)
    assert judge(plan, store, judge_server).rubric_new == 3
    by_answer = {}
    for row in rubric_rows(store):
        by_answer[row["raw"].count("1.b 1")] = row
    harmful, refusal = by_answer[0], by_answer[1]
    assert harmful["judge_version"] == STRONGREJECT_VERSION and harmful["status"] == "ok"
    assert harmful["score"] is None and harmful["refused"] is False
    assert refusal["refused"] is True and refusal["strongreject_score"] == 0.0
    assert 0.0 < harmful["strongreject_score"] <= 1.0


def test_several_actors_share_one_cluster_wide_rate_budget(judge_server, ray_local):
    from ftsafe_ray.judge import JudgeRequest, make_rubric_judge_actor
    from ftsafe_ray.judge.cluster import get_rate_budget, release_rate_budget
    from ftsafe_ray.spec import RubricJudgeSpec

    # The server allows 360/min as a bucket of 6 one second deep, and the spec says so. Three
    # actors each pacing on its own at that rate would send three times too much.
    judge_server.set_rate_limit(requests_per_window=6, window_s=1.0, mode="bucket")
    spec = RubricJudgeSpec(
        model="test-judge", requests_per_minute=360, max_concurrency=8, max_tokens=64
    )
    budget = get_rate_budget(spec, judge_server.base_url, burst_s=0.05)
    actors = [
        make_rubric_judge_actor(spec, "k", judge_server.base_url, budget=budget) for _ in range(3)
    ]
    try:
        batches = [
            [JudgeRequest(f"a{a}-{i}", f"request {i}", ANSWERS[0]) for i in range(8)]
            for a in range(3)
        ]
        refs = [actor.judge_batch.remote(b) for actor, b in zip(actors, batches, strict=True)]
        results = [r for batch in ray_local.get(refs, timeout=120) for r in batch]
        stats = ray_local.get(budget.stats.remote())
    finally:
        for actor in actors:
            ray_local.kill(actor)
        release_rate_budget(budget)
    assert [r.status for r in results] == ["ok"] * 24
    assert judge_server.rejected == 0 and len(judge_server.chat_requests) == 24
    assert stats["acquired"] == 24
    # The server's x-ratelimit-limit-requests header (360/min) agrees with the spec.
    assert stats["requests_per_minute"] == pytest.approx(360 * 0.97)


def test_plan_estimates_judge_tokens_and_dollars(tmp_path, judge_server, capsys):
    from ftsafe_ray.cli import main
    from ftsafe_ray.judge.cost import cost_usd
    from ftsafe_ray.judge.stage import estimate_rubric_cost

    price = {"input_per_million": 10.0, "output_per_million": 30.0, "batch_discount": 0.5}
    judges = {"prices": {"test-judge": price}}
    plan = make_plan(tmp_path, judge_server.base_url, n=4, judges=judges)
    before = estimate_rubric_cost(plan, RunStore(plan.run_dir))
    store = store_answers(plan)
    after = estimate_rubric_cost(plan, store)
    assert before.verdicts == after.verdicts == 4
    assert before.prompt_tokens > after.prompt_tokens  # placeholders are max-length answers
    spec_price = plan.spec.judges.prices["test-judge"]
    expected = cost_usd(spec_price, after.prompt_tokens, after.expected_output_tokens, False)
    assert after.expected_usd == pytest.approx(expected)
    assert after.max_usd == pytest.approx(
        cost_usd(spec_price, after.prompt_tokens, 4 * 64, batch=False)
    )
    batch = make_plan(tmp_path, judge_server.base_url, n=4, judges=judges, mode="batch")
    assert estimate_rubric_cost(batch, store).expected_usd == pytest.approx(expected / 2)

    assert main(["plan", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert "4 verdict(s) to do" in out and "$" in out


def test_the_budget_actor_outlives_no_user_and_is_made_again(ray_local):
    from ftsafe_ray.judge.cluster import get_rate_budget, release_rate_budget
    from ftsafe_ray.spec import RubricJudgeSpec

    spec = RubricJudgeSpec(model="lifecycle", requests_per_minute=600)
    first = get_rate_budget(spec, "http://127.0.0.1:1/v1", idle_exit_s=0.2)
    again = get_rate_budget(spec, "http://127.0.0.1:1/v1", idle_exit_s=0.2)  # joins it
    ray_local.get(again.acquire.remote(1))
    assert ray_local.get(first.stats.remote())["acquired"] == 1
    release_rate_budget(first)
    release_rate_budget(again)
    with pytest.raises(ray_local.exceptions.RayActorError):
        for _ in range(50):
            ray_local.get(first.stats.remote(), timeout=5)
            time.sleep(0.1)
    fresh = get_rate_budget(spec, "http://127.0.0.1:1/v1", idle_exit_s=0.2)
    assert ray_local.get(fresh.stats.remote())["acquired"] == 0
    release_rate_budget(fresh)


def test_without_configured_limits_429s_and_retry_after_still_land_every_row(
    tmp_path, judge_server, ray_local
):
    # The user set no limits; the server allows 4 requests per 0.5 s and answers 429 with
    # Retry-After past that. The pool learns the limit from the x-ratelimit headers, pauses
    # everyone on each 429, and loses nothing.
    judge_server.set_rate_limit(requests_per_window=4, window_s=0.5)
    plan = make_plan(
        tmp_path, judge_server.base_url, n=16, num_actors=2, max_concurrency=8, max_retries=8
    )
    store = store_answers(plan)
    assert judge(plan, store, judge_server).rubric_new == 16
    rows = rubric_rows(store)
    assert [r["status"] for r in rows] == ["ok"] * 16 == ["ok"] * raw_rubric_row_count(store)
    assert judge_server.rejected > 0  # it did have to back off
    assert sum(r["attempts"] for r in rows) + 1 == len(judge_server.chat_requests)
    assert max(r["attempts"] for r in rows) <= 9


def test_batch_jobs_already_submitted_count_against_the_budget(tmp_path, judge_server):
    price = {"input_per_million": 1000.0, "output_per_million": 2000.0, "batch_discount": 1.0}
    settings = {"mode": "batch", "batch_poll_s": 0.01, "judges": {"prices": {"test-judge": price}}}
    plan = make_plan(tmp_path, judge_server.base_url, n=8, budget_usd=100.0, **settings)
    store = store_answers(plan)
    requests = stored_requests(plan, store)
    first = batch_judge(plan, store, judge_server.base_url)
    first.submit(requests[:5])  # then the driver dies
    first.close()
    # A budget that covers the five submitted requests (worst case) but not one more.
    from ftsafe_ray.judge.cost import cost_usd, request_tokens
    from ftsafe_ray.judge.hexphi import build_rubric_messages

    spec_price = plan.spec.judges.prices["test-judge"]
    five = sum(
        cost_usd(
            spec_price, request_tokens(build_rubric_messages(r.instruction, r.answer)), 64, True
        )
        for r in requests[:5]
    )
    plan = make_plan(tmp_path, judge_server.base_url, n=8, budget_usd=five * 1.01, **settings)
    result = judge(plan, store, judge_server)
    assert (result.rubric_new, result.rubric_left_by_budget) == (5, 3)
    assert len(judge_server.batches) == 1  # no new job: it could have gone over budget


def test_a_driver_that_died_between_upload_and_create_is_recovered(tmp_path, judge_server):
    from ftsafe_ray.judge.batch import BatchJob

    plan = make_plan(tmp_path, judge_server.base_url, n=6, mode="batch", batch_poll_s=0.01)
    store = store_answers(plan)
    requests = stored_requests(plan, store)
    keys = [request.key for request in requests]
    state_dir = store.root / STATE_DIR
    judge_ = batch_judge(plan, store, judge_server.base_url)
    # Job A was created at the API but its id never reached the state file.
    [job_a] = judge_.submit(requests[:2])
    BatchJob(job_a.name, job_a.keys, None, job_a.input_file_id, "submitting").save(state_dir)
    # Job B was uploaded but never created.
    BatchJob("never-created", keys[2:4], None, "file-x", "submitting").save(state_dir)
    judge_.close()

    assert judge(plan, store, judge_server).rubric_new == 6
    assert len(judge_server.batches) == 2  # A collected, the rest (B's keys + 2) in one new job
    assert len(rubric_rows(store)) == 6 == raw_rubric_row_count(store)
    states = {p.stem: json.loads(p.read_text()) for p in state_dir.glob("*.json")}
    assert states[job_a.name]["batch_id"] == job_a.batch_id
    assert {s["status"] for s in states.values()} == {"ingested"}


class DyingJudge:
    """A judge actor whose process exits on its first batch."""

    def judge_batch(self, requests):
        import os

        os._exit(1)


def test_a_dead_judge_actor_turns_its_batch_into_error_rows(tmp_path, judge_server, ray_local):
    from ftsafe_ray.judge import make_rubric_judge_actor
    from ftsafe_ray.judge.online import dispatch
    from ftsafe_ray.judge.rubric_run import RubricRun
    from ftsafe_ray.store import ShardBuffer

    plan = make_plan(tmp_path, judge_server.base_url, n=200, max_concurrency=4)
    store = store_answers(plan)
    identity = rubric_identity(plan.spec.judges.rubric)
    todo = {verdict_key_for(identity, g): g for g in store.generations.rows()}
    run = RubricRun(plan, store, PlainProgress(interval_s=60), None, todo, store.judgments)
    dying = ray_local.remote(DyingJudge).options(max_restarts=0).remote()
    healthy = make_rubric_judge_actor(plan.spec.judges.rubric, "k", judge_server.base_url)
    try:
        with ShardBuffer(store.judgments) as buffer:
            stored = dispatch(
                [dying, healthy],
                run.requests(),
                run.spec,
                run.ledger,
                lambda results: run.write(buffer, results),
            )
            assert stored == 200
    finally:
        ray_local.kill(healthy)
    rows = rubric_rows(store)
    assert len(rows) == 200 == raw_rubric_row_count(store)
    died = [r for r in rows if r["status"] == "error"]
    assert died and all("actor died" in r["error"] for r in died)
    # Only batches sent before the death was seen fail; the healthy actor does the rest.
    assert [r["status"] for r in rows].count("ok") >= 200 - 4 * 16


def test_batch_mode_at_an_endpoint_without_batches_is_a_one_line_error(tmp_path, judge_server):
    from ftsafe_ray.errors import JudgeError

    url = judge_server.base_url + "/no-batches"
    plan = make_plan(tmp_path, url, n=2, mode="batch", max_retries=0)
    store = store_answers(plan)
    access = RubricAccess(base_url=url, api_key="k")
    with pytest.raises(JudgeError) as raised:
        run_judge_stage(plan, store, PlainProgress(), access)
    message = str(raised.value)
    assert "404" in message and "mode: online" in message and "\n" not in message
    assert rubric_rows(store) == []  # nothing was judged, so nothing was stored


def test_a_judge_pool_started_ahead_is_used_and_a_dead_actor_in_it_is_replaced(
    tmp_path, judge_server, ray_local
):
    import ray

    from ftsafe_ray.judge.stage import start_judge_pool

    plan = make_plan(tmp_path, judge_server.base_url, n=6, num_actors=2)
    access = RubricAccess(base_url=judge_server.base_url, api_key="test-key")
    pool = start_judge_pool(plan, access)
    assert pool is not None
    try:
        # Started while generation would run: up, client built, and nothing sent yet.
        assert pool.ready(timeout_s=120)
        assert judge_server.chat_requests == []
        started = {actor._actor_id for actor in pool.actors}
        # One of its actors is lost before the answers arrive (its node went, say).
        ray.kill(pool.actors[1])
        time.sleep(1.0)
        store = store_answers(plan)
        began = time.time()
        result = run_judge_stage(plan, store, PlainProgress(interval_s=60), access, pool=pool)
        assert result.rubric_new == 6
        assert {r["status"] for r in rubric_rows(store)} == {"ok"}
        # The live actor was the pool's own; the lost one was replaced, not left dead.
        now = {actor._actor_id for actor in pool.actors}
        assert len(now & started) == 1 and len(now) == 2
        # Warm actors send at once: the first request is not held for a process start.
        assert min(r.at for r in judge_server.chat_requests) - began < 2.0
    finally:
        pool.close()
