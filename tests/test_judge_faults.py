"""A judge endpoint misbehaving for a whole judge stage, through the real Ray pool."""

from __future__ import annotations

import threading
from collections import deque

import pytest

from tests.fixtures.judge_server import (
    hang,
    judge_refusal,
    malformed,
    rate_limited,
    server_error,
    truncated,
    verdict,
)
from tests.test_judge_stage import (
    judge,
    make_plan,
    raw_rubric_row_count,
    request_index,
    rubric_rows,
    store_answers,
)

STATUSES = {"ok", "unparseable", "judge_refused", "truncated", "error"}


@pytest.mark.reliability(
    fault="The judge endpoint misbehaving for a whole judge stage: 429 storms, 500s, hangs "
    "past the timeout, malformed, refusing and cut-off verdicts, mixed",
    outcome="every answer ends in exactly one row; a rerun sends nothing; --retry-failed "
    "redoes only the error rows",
)
def test_a_misbehaving_endpoint_leaves_every_answer_accounted_for(
    tmp_path, judge_server, ray_local
):
    storm = [rate_limited("0.05")] * 8
    faults = [server_error(), malformed(), hang(3.0), judge_refusal(), truncated(), truncated()]
    script = deque(storm + faults * 3 + storm)
    lock = threading.Lock()

    def reply(body):
        # Requests 0 and 1 always get a 500, so some answers surely end as error rows
        # whatever order the pool sends in; the others play the script, then verdicts.
        if request_index(body) in (0, 1):
            return server_error()
        with lock:
            return script.popleft() if script else verdict()

    judge_server.set_behaviour(reply)
    plan = make_plan(
        tmp_path, judge_server.base_url, n=24, num_actors=2, max_concurrency=4,
        max_retries=2, timeout_s=1.0,
    )  # fmt: skip
    store = store_answers(plan)
    judge(plan, store, judge_server)

    rows = rubric_rows(store)
    assert len(rows) == 24 == raw_rubric_row_count(store)
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= STATUSES
    assert {"unparseable", "judge_refused", "error"} <= set(statuses)
    for row in rows:
        if row["status"] == "error":
            assert row["error"] and "\n" not in row["error"]
        elif row["status"] != "ok":
            assert row["raw"]  # flagged verdicts keep the judge's reply

    sent = len(judge_server.chat_requests)
    again = judge(plan, store, judge_server)
    assert again.rubric_new == 0 and len(judge_server.chat_requests) == sent

    errors = {r["key"] for r in rows if r["status"] == "error"}
    judge_server.set_behaviour([])  # the endpoint recovers
    retried = judge(plan, store, judge_server, retry_failed=True)
    assert retried.rubric_new == len(errors)
    # Only the error rows were asked again (one check call and one request each).
    assert len(judge_server.chat_requests) - sent == len(errors) + 1
    after = {r["key"]: r for r in rubric_rows(store)}
    assert {after[key]["status"] for key in errors} == {"ok"}
    assert all(after[r["key"]]["status"] == r["status"] for r in rows if r["key"] not in errors)
    assert raw_rubric_row_count(store) == 24 + len(errors)
