"""Judging while generation runs (judge/live.py): keyword and rubric verdicts are stored as
answers land, the pass after generation does only what is left, every answer ends with one
verdict per judge, and the endpoint check goes out once for the whole campaign.

Real Ray, the real judge pool over real HTTP, real Parquet; the "generation" is this test
writing answer shards over time, as the generate stage's buffer does.
"""

from __future__ import annotations

import time
from collections import Counter

from ftsafe_ray.judge.live import LiveJudge, PassProgress, combine
from ftsafe_ray.judge.stage import RubricAccess, run_judge_stage, start_judge_pool
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row
from tests.test_judge_stage import ANSWERS, make_plan, raw_rubric_row_count

ENDPOINT_CHECK = "Reply with the word OK."


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_answers_are_judged_as_they_land_and_the_last_pass_does_the_rest(
    tmp_path, judge_server, ray_local, capsys
):
    plan = make_plan(tmp_path, judge_server.base_url, n=12, num_actors=2)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    access = RubricAccess(base_url=judge_server.base_url, api_key="test-key")
    pool = start_judge_pool(plan, access)
    assert pool is not None
    passes = PassProgress(PlainProgress(interval_s=60))
    units = list(plan.generations)
    try:
        live = LiveJudge(plan, store, passes, access, pool, interval_s=0.2).start()
        try:
            # Generation stores its first shard: judged while "generation" still runs.
            first = [answer_row(u, ANSWERS[i % 3]) for i, u in enumerate(units[:6])]
            store.generations.write(first)
            first_keys = {row["key"] for row in first}

            def judged_by_both() -> bool:
                rows = store.judgments.rows()
                return {r["generation_key"] for r in rows if r["judge"] == "rubric"} >= first_keys

            wait_until(judged_by_both, 60)
            keyword = {
                r["generation_key"] for r in store.judgments.rows() if r["judge"] == "keyword"
            }
            assert keyword >= first_keys
            # The second shard lands just before generation ends.
            store.generations.write(
                [answer_row(u, ANSWERS[i % 3]) for i, u in enumerate(units[6:], start=6)]
            )
        finally:
            during = live.stop()
        passes.final = True
        final = run_judge_stage(plan, store, passes, access, pool=pool)
    finally:
        pool.close()
    judged = combine(during, final)
    assert during.rubric_new >= 2  # the first shard's distinct answers, judged live
    rows = store.judgments.rows()
    rubric = [r for r in rows if r["judge"] == "rubric"]
    # Equal answers to one prompt share a verdict; all 12 answers are covered, once each.
    assert judged.rubric_new == len(rubric) == raw_rubric_row_count(store)
    assert {r["status"] for r in rubric} == {"ok"}
    keyword = Counter(r["generation_key"] for r in rows if r["judge"] == "keyword")
    assert set(keyword) == {u.key for u in units} and judged.keyword_new == sum(keyword.values())
    # One endpoint check for the campaign, not one per pass; nothing asked twice.
    contents = [r.body["messages"][-1]["content"] for r in judge_server.chat_requests]
    assert contents.count(ENDPOINT_CHECK) == 1
    asked = Counter(c for c in contents if c != ENDPOINT_CHECK)
    assert max(asked.values()) == 1
    # The passes show as one stage: one start and one finish per judge.
    out = capsys.readouterr().out
    assert out.count("[rubric] start") == 1 and out.count("[rubric] done") == 1
    assert out.count("[keyword] done") == 1
