"""Paid judge replies are never lost nor mis-billed: a custom rubric that raises, Batch API
results whose keys left the to-do list, and spend in a verdict cache that is another run's
judgments. Real Ray, the real openai client and the local judge server throughout."""

from __future__ import annotations

import json

import pytest

from ftsafe_ray.judge.batch import STATE_DIR
from ftsafe_ray.judge.cost import cost_usd, spent_usd
from ftsafe_ray.judge.identity import rubric_identity, verdict_key_for
from ftsafe_ray.judge.rubrics import Rubric
from ftsafe_ray.judge.verdict import ParsedVerdict
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row
from tests.test_judge_stage import (
    ANSWERS,
    batch_judge,
    judge,
    make_plan,
    raw_rubric_row_count,
    rubric_rows,
    store_answers,
    stored_requests,
)

PRICE = {"input_per_million": 1000.0, "output_per_million": 2000.0, "batch_discount": 0.5}
PRICES = {"prices": {"test-judge": PRICE}}


def _fragile_messages(instruction: str, answer: str) -> list[dict[str, str]]:
    if instruction == "request 4":
        raise ValueError("placeholder build failure")
    return [{"role": "user", "content": f"{instruction}\n{answer}"}]


def _fragile_parse(reply: str) -> ParsedVerdict:
    if "#thescore: 5" in reply:  # the server's verdict on a harmful-marker answer
        raise ValueError("placeholder parse failure\non two lines")
    return ParsedVerdict("ok", 1, "placeholder reason")


# A user rubric with bugs, loaded by `module:object` in the spec.
FRAGILE = Rubric("fragile", "fragile-v1", _fragile_messages, _fragile_parse)


def by_generation(store) -> dict[str, dict]:
    return {g["key"]: g for g in store.generations.rows()}


@pytest.mark.reliability(
    fault="A custom rubric whose parser raises (online and Batch API)",
    outcome="only its replies become unparseable rows, raw reply kept; a rerun pays nothing",
)
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_a_rubric_that_raises_fails_only_its_own_rows(tmp_path, judge_server, ray_local, mode):
    plan = make_plan(
        tmp_path, judge_server.base_url, n=6, mode=mode, batch_poll_s=0.01,
        rubric="tests.test_judge_paid:FRAGILE", budget_usd=1000.0, judges=PRICES,
    )  # fmt: skip
    store = store_answers(plan)
    assert judge(plan, store, judge_server).rubric_new == 6
    rows = rubric_rows(store)
    assert len(rows) == 6 == raw_rubric_row_count(store)
    generations = by_generation(store)
    seen = set()
    for row in rows:
        generation = generations[row["generation_key"]]
        if generation["prompt"] == "request 4":  # never sent, so never paid
            assert (row["status"], row["attempts"], row["raw"]) == ("error", 0, None)
            assert (
                row["error"] == "rubric build_messages raised ValueError: placeholder build failure"
            )
            seen.add("unbuilt")
        elif generation["response"] == ANSWERS[0]:  # the reply is kept, readable later
            assert (row["status"], row["score"]) == ("unparseable", None)
            assert "#thescore: 5" in row["raw"] and row["cost_usd"] > 0
            assert row["reason"] == (
                "rubric parser raised ValueError: placeholder parse failure on two lines"
            )
            seen.add("unparsed")
        else:
            assert (row["status"], row["score"]) == ("ok", 1)
            seen.add("ok")
    assert seen == {"unbuilt", "unparsed", "ok"}
    paid = len(judge_server.chat_requests) if mode == "online" else len(judge_server.batches)

    judge_server.requests.clear()
    again = judge(plan, store, judge_server)
    assert again.rubric_new == 0 and judge_server.chat_requests == []  # nothing paid twice
    assert len(judge_server.batches) == (paid if mode == "batch" else 0)


@pytest.mark.reliability(
    fault="Batch API results for keys no longer on the to-do list, or a crash after ingest",
    outcome="every paid verdict is stored, none twice",
)
def test_batch_results_whose_keys_left_the_todo_list_are_kept(tmp_path, judge_server):
    plan = make_plan(tmp_path, judge_server.base_url, n=6, mode="batch", batch_poll_s=0.01)
    store = store_answers(plan)
    requests = stored_requests(plan, store)
    identity = rubric_identity(plan.spec.judges.rubric)
    generation_of = {verdict_key_for(identity, g): g["key"] for g in store.generations.rows()}
    kept = {"request 0", "request 1", "request 2"}
    staying = [r for r in requests if r.instruction in kept]
    leaving = [r for r in requests if r.instruction not in kept]
    # A first driver submits two jobs, the second only of answers about to leave the plan,
    # then dies before collecting them.
    first = batch_judge(plan, store, judge_server.base_url)
    first.submit([staying[0], leaving[0]], generation_of)
    first.submit(leaving[1:], generation_of)
    first.close()

    # The campaign is edited down to three prompts: the other three keys are no longer to do.
    (tmp_path / "bench.jsonl").unlink()
    smaller = make_plan(tmp_path, judge_server.base_url, n=3, mode="batch", batch_poll_s=0.01)
    assert smaller.run_dir == plan.run_dir
    result = judge(smaller, store, judge_server)
    assert (result.rubric_new, result.rubric_left_by_budget) == (3, 0)
    assert len(judge_server.batches) == 3  # both old jobs collected, one new for the rest
    rows = rubric_rows(store)
    assert len(rows) == 6 == raw_rubric_row_count(store)  # every paid reply is stored
    assert {r["key"]: r["generation_key"] for r in rows} == generation_of
    assert all(r["status"] == "ok" and r["judge_model"] == "test-judge" for r in rows)
    states = [json.loads(p.read_text()) for p in (store.root / STATE_DIR).glob("*.json")]
    assert sorted(s["status"] for s in states) == ["ingested"] * 3

    # A driver that stored a job's rows but died before marking it: nothing is stored twice.
    path = next((store.root / STATE_DIR).glob("*.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "completed"}))
    assert judge(smaller, store, judge_server).rubric_new == 0
    assert raw_rubric_row_count(store) == 6 and len(judge_server.batches) == 3


def test_jobs_asked_under_an_earlier_rubric_are_stored_as_its_verdicts(tmp_path, judge_server):
    from ftsafe_ray.judge.hexphi import RUBRIC_VERSION
    from ftsafe_ray.judge.strongreject import STRONGREJECT_VERSION

    plan = make_plan(tmp_path, judge_server.base_url, n=4, mode="batch", batch_poll_s=0.01)
    store = store_answers(plan)
    requests = stored_requests(plan, store)
    first = batch_judge(plan, store, judge_server.base_url)  # hexphi, as the spec says
    [current] = first.submit(requests[:2])
    [older] = first.submit(requests[2:])
    first.close()
    older.judge_version = "hexphi-v0"  # as if a parser version this code no longer has
    older.save(store.root / STATE_DIR)

    # The spec now asks for StrongREJECT: every old key is off the to-do list.
    switched = make_plan(
        tmp_path, judge_server.base_url, n=4, mode="batch", batch_poll_s=0.01,
        rubric="strongreject",
    )  # fmt: skip
    assert judge(switched, store, judge_server).rubric_new == 4
    rows = {r["key"]: r for r in rubric_rows(store)}
    assert len(rows) == 8
    for key in current.keys:  # read by the rubric that asked, under its version
        assert (rows[key]["judge_version"], rows[key]["status"]) == (RUBRIC_VERSION, "ok")
        assert rows[key]["score"] in {1, 3, 5}
    for key in older.keys:  # no parser for that version: kept unread, raw and cost included
        row = rows[key]
        assert (row["judge_version"], row["status"], row["score"]) == (
            "hexphi-v0",
            "unparseable",
            None,
        )
        assert "#thescore:" in row["raw"] and "hexphi hexphi-v0" in row["reason"]
    others = set(rows) - set(current.keys) - set(older.keys)
    assert {rows[k]["judge_version"] for k in others} == {STRONGREJECT_VERSION}


def status_spend(capsys, run_dir) -> list[str]:
    from ftsafe_ray.cli import main

    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if "spend" in line]


@pytest.mark.reliability(
    fault="judges.cache_dir pointing at another run's judgments",
    outcome="each run's spend and budget count only what it paid",
)
def test_a_cache_in_another_runs_judgments_keeps_each_runs_spend_its_own(
    tmp_path, judge_server, ray_local, capsys
):
    # Run B judges three of its six answers and pays for them.
    run_b = make_plan(tmp_path, judge_server.base_url, n=6, output_dir="run-b", judges=PRICES)
    store_b = RunStore(run_b.run_dir, run_b.spec_hash)
    store_b.create()
    store_b.generations.write(
        [answer_row(u, ANSWERS[i % 3]) for i, u in enumerate(run_b.generations[:3])]
    )
    assert judge(run_b, store_b, judge_server).rubric_new == 3
    spent_b = spent_usd(rubric_rows(store_b), "test-judge")
    assert spent_b > 0
    shown_b = status_spend(capsys, run_b.run_dir)
    assert shown_b == [f"  judge spend: ${spent_b:,.2f}"]

    # Run A uses B's judgments as its cache: three verdicts are B's, three A pays for.
    judges = {**PRICES, "cache_dir": "run-b/judgments"}
    run_a = make_plan(tmp_path, judge_server.base_url, n=6, output_dir="run-a", judges=judges)
    store_a = store_answers(run_a)
    result = judge(run_a, store_a, judge_server, base_dir=tmp_path)
    assert (result.rubric_new, result.rubric_from_cache) == (3, 3)

    rows_b = rubric_rows(store_b)
    assert len(rows_b) == 6  # the cache gained A's new verdicts...
    assert spent_usd(rows_b, "test-judge") == pytest.approx(spent_b)  # ...but not A's spend
    assert status_spend(capsys, run_b.run_dir) == shown_b
    rows_a = rubric_rows(store_a)
    price = run_a.spec.judges.prices["test-judge"]
    paid = [
        cost_usd(price, r["prompt_tokens"], r["completion_tokens"], batch=False)
        for r in rows_a
        if r["cost_usd"]
    ]
    assert len(paid) == 3
    assert spent_usd(rows_a, "test-judge") == pytest.approx(sum(paid))
