"""The cluster-wide rate budget's life over real Ray: a lost budget actor is made again with
no row failing, one whose driver was killed still exits, and a new campaign's configured
limits replace older ones."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ftsafe_ray.judge import JudgeRequest, make_rubric_judge_actor
from ftsafe_ray.judge.cluster import (
    NAMESPACE,
    ClusterRateBudget,
    budget_name,
    get_rate_budget,
    release_rate_budget,
)
from ftsafe_ray.judge.limiter import PACE_FRACTION
from ftsafe_ray.spec import RubricJudgeSpec

NOWHERE = "http://127.0.0.1:1/v1"  # budgets never call their endpoint


def gone_within(ray, actor, seconds: float) -> bool:
    """Whether `actor` stops answering within `seconds` (stats calls are not uses)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.stats.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


def rates(ray, budget) -> tuple[float | None, float | None]:
    stats = ray.get(budget.stats.remote())
    return stats["requests_per_minute"], stats["tokens_per_minute"]


@pytest.mark.reliability(
    fault="The cluster rate-budget actor killed mid-run",
    outcome="made again (or local pacing); no verdict becomes an error",
)
def test_a_killed_budget_actor_is_made_again_and_no_row_fails(judge_server, ray_local):
    spec = RubricJudgeSpec(
        model="test-judge", requests_per_minute=6000, max_tokens=64, max_retries=0
    )
    budget = get_rate_budget(spec, judge_server.base_url)
    actor = make_rubric_judge_actor(spec, "k", judge_server.base_url, budget=budget)
    requests = [JudgeRequest(f"k{i}", f"request {i}", "placeholder answer") for i in range(6)]
    remade = None
    try:
        first = ray_local.get(actor.judge_batch.remote(requests[:2]), timeout=60)
        ray_local.kill(budget)
        assert gone_within(ray_local, budget, 30)
        results = ray_local.get(actor.judge_batch.remote(requests[2:]), timeout=120)
        assert [r.status for r in first + results] == ["ok"] * 6
        name = budget_name(spec, judge_server.base_url)
        remade = ray_local.get_actor(name, namespace=NAMESPACE)
        stats = ray_local.get(remade.stats.remote())
    finally:
        ray_local.kill(actor)
        if remade is not None:
            ray_local.kill(remade)
    # The four later requests went through the budget made again, at the spec's limits.
    assert stats["acquired"] == 4
    assert stats["requests_per_minute"] == pytest.approx(6000 * PACE_FRACTION)


@pytest.mark.reliability(
    fault="The driver killed while the detached budget actor lives",
    outcome="the budget actor exits once unused",
)
def test_a_budget_whose_driver_was_killed_exits_once_unused(ray_local):
    spec = RubricJudgeSpec(model="orphaned", requests_per_minute=600)
    budget = get_rate_budget(spec, NOWHERE, idle_exit_s=0.1, orphan_exit_s=3.0)
    # Its driver is killed now: nothing ever releases it.
    ray_local.get(budget.acquire.remote(1))
    time.sleep(0.5)
    # Its holder is left, so it did not exit idle_exit_s after the last use...
    assert ray_local.get(budget.stats.remote())["acquired"] == 1
    # ...but it does once unused for orphan_exit_s.
    assert gone_within(ray_local, budget, 30)
    fresh = get_rate_budget(spec, NOWHERE, idle_exit_s=0.1, orphan_exit_s=3.0)
    assert ray_local.get(fresh.stats.remote())["acquired"] == 0
    release_rate_budget(fresh)


@pytest.mark.reliability(
    fault="A campaign raising its provider limits on a cluster that ran an older one",
    outcome="the new configured limits replace the old and learned ones",
)
def test_a_new_campaigns_configured_limits_replace_older_and_learned_ones(ray_local):
    first_spec = RubricJudgeSpec(model="reconfigured", requests_per_minute=600)
    first = get_rate_budget(first_spec, NOWHERE, idle_exit_s=0.2)
    budgets = [first]
    try:
        ray_local.get(first.lower_limits.remote(300, None))  # a provider's header: 300/min
        assert rates(ray_local, first) == pytest.approx((300 * PACE_FRACTION, None))
        raised = RubricJudgeSpec(
            model="reconfigured", requests_per_minute=1200, tokens_per_minute=90_000
        )
        budgets.append(get_rate_budget(raised, NOWHERE, idle_exit_s=0.2))
        ray_local.get(budgets[-1].acquire.remote(1))
        assert ray_local.get(first.stats.remote())["acquired"] == 1  # the same actor
        assert rates(ray_local, first) == pytest.approx(
            (1200 * PACE_FRACTION, 90_000 * PACE_FRACTION)
        )
        lowered = RubricJudgeSpec(model="reconfigured", requests_per_minute=100)
        budgets.append(get_rate_budget(lowered, NOWHERE, idle_exit_s=0.2))
        assert rates(ray_local, first) == pytest.approx((100 * PACE_FRACTION, None))
    finally:
        for budget in budgets:
            release_rate_budget(budget)


def test_a_lost_budget_that_cannot_be_made_again_falls_back_to_pacing_alone(ray_local, caplog):
    spec = RubricJudgeSpec(model="unmakeable", requests_per_minute=600)
    budget = get_rate_budget(spec, NOWHERE)
    ray_local.kill(budget)
    assert gone_within(ray_local, budget, 30)
    cluster = ClusterRateBudget(budget)  # no spec: nothing to make it again from

    async def three_requests() -> None:
        for _ in range(3):
            await cluster.acquire(1)

    with caplog.at_level(logging.WARNING, logger="ftsafe_ray.judge.cluster"):
        asyncio.run(three_requests())
    assert "budget was lost (ActorDiedError)" in caplog.text and "paces alone" in caplog.text
