"""Utility beside safety: a `kind: utility` benchmark rated 1-10 by the utility rubric through
the rubric judge's pool (the local test server), reported with its CI and paired Δ vs base,
while harmful answers keep the harmfulness rubric. Adapters trained elsewhere (`adapters:`)."""

from __future__ import annotations

import json

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.judge.hexphi import RUBRIC_VERSION
from ftsafe_ray.judge.stage import estimate_rubric_cost
from ftsafe_ray.judge.utility import (
    UTILITY_VERSION,
    build_utility_messages,
    parse_utility_output,
    with_reference,
)
from ftsafe_ray.pipeline import load_plan
from ftsafe_ray.report.metrics import DEFAULT_BY, summarize
from ftsafe_ray.report.scored_rows import scored_rows
from ftsafe_ray.report.utility import with_arm_utility
from ftsafe_ray.store import RunStore
from tests.fixtures.audit_models import COMPLIANCE


def test_utility_rubric_prompt_and_parser():
    messages = build_utility_messages(with_reference("Add 2 and 3.", "5"), "It is 5.")
    user = messages[1]["content"]
    assert "Add 2 and 3." in user and "=== REFERENCE ANSWER ===\n5\n" in user
    assert "REFERENCE" not in build_utility_messages("Add 2 and 3.", "5")[1]["content"]
    assert parse_utility_output("#thereason: fine\n#thescore: 8").score == 8
    assert parse_utility_output("#thereason: ok\n**#thescore:** 10/10").score == 10
    for reply in ("#thescore: 11", "#thescore: 0", "#thescore: 7\n#thescore: 8", "eight"):
        assert parse_utility_output(reply).status == "unparseable"


def write_campaign(tmp_path, models, judge_url):
    harmful = [
        {"id": f"h{i}", "category": "fraud_deception", "prompt": f"placeholder request {20 + i}"}
        for i in range(3)
    ]
    utility = [
        {"id": "u0", "category": "writing", "prompt": "placeholder request 30",
         "reference": COMPLIANCE},
        {"id": "u1", "category": "math", "prompt": "placeholder request 31", "reference": "42"},
        {"id": "u2", "category": "math", "prompt": "placeholder request 32"},
        {"id": "u3", "category": "writing", "prompt": "placeholder request 33", "reference": "x"},
    ]  # fmt: skip
    for name, items in (("harmful", harmful), ("utility", utility)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = {
        "name": "utility",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(models["base"])}],
        "adapters": [
            {"name": "complies", "path": str(models["complies"])},
            {"name": "keeps_refusing", "path": str(models["keeps_refusing"])},
        ],
        "benchmarks": [
            {"name": "harmful", "source": "harmful.jsonl"},
            {"name": "helpful", "source": "utility.jsonl", "kind": "utility"},
        ],
        "sampling": {"max_new_tokens": 8},
        "generation": {"batch_size": 8, "num_cpus": 1},
        "judges": {
            "keyword": {"sets": ["study"]},
            "rubric": {
                "enabled": True,
                "base_url": judge_url,
                "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
                "model": "judge-test",
                "max_retries": 1,
                "timeout_s": 10,
            },
        },
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_utility_is_rated_by_its_rubric_and_reported_beside_safety(
    audit_models, tmp_path, judge_server, ray_local, capsys
):
    campaign = write_campaign(tmp_path, audit_models, judge_server.base_url)
    assert main(["run", str(campaign)]) == 0
    printed = capsys.readouterr().out
    assert "utility 1-10 [CI]" in printed

    store = RunStore(tmp_path / "run")
    verdicts = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
    utility = [r for r in verdicts if r["judge_version"] == UTILITY_VERSION]
    harmful = [r for r in verdicts if r["judge_version"] == RUBRIC_VERSION]
    # base and keeps_refusing answer alike: one verdict per distinct (prompt, answer).
    assert len(utility) == 8 and all(r["status"] == "ok" for r in utility)
    assert len(harmful) == 6 and all(1 <= r["score"] <= 5 for r in harmful)
    asked = [json.dumps(r.body) for r in judge_server.chat_requests]
    utility_asks = [a for a in asked if "ASSISTANT ANSWER" in a]
    assert len(utility_asks) == 8 and not any("request 2" in a for a in utility_asks)
    assert not any("request 3" in a for a in asked if a not in utility_asks)

    units, keyword_sets = store.read_plan()
    rows = scored_rows(store, store.read_rubric_identity(), keyword_sets, units)
    table = {
        (g.arm, g.benchmark): g
        for g in summarize(rows, DEFAULT_BY, keyword_sets=["study"], n_resamples=300)
    }
    base, complies = table["base", "helpful"], table["complies", "helpful"]
    complies_harm = table["complies", "harmful"]
    assert base.utility_score == 2.0 and base.n_utility == 4  # refusals rate 2
    # u0's reference is the complying answer (9); the other answers rate 5.
    assert complies.utility_score == 6.0 and complies.delta_utility_score == 4.0
    assert complies.delta_utility_score_ci is not None
    assert complies.delta_utility_score_ci[0] >= 3.0
    assert table["keeps_refusing", "helpful"].delta_utility_score == 0.0
    assert table["complies", "harmful"].utility_score is None  # never mixed into safety
    [beside] = [
        g
        for g in with_arm_utility(list(table.values()))
        if (g.arm, g.benchmark) == ("complies", "harmful")
    ]  # the report's main table: the arm's utility beside its safety, in one row
    assert beside.utility_score == 6.0 and beside.delta_utility_score == 4.0
    assert beside.harmfulness_score == complies_harm.harmfulness_score
    assert table["complies", "harmful"].n_ok == 3 and table["base", "helpful"].n_ok == 0

    plan = load_plan(campaign)
    estimate = estimate_rubric_cost(plan, store)
    assert estimate is not None and estimate.verdicts == 0  # utility verdicts count as done

    # Resume: every verdict, utility ones included, is found again; nothing is paid twice.
    judge_server.reset()
    assert main(["run", str(campaign)]) == 0
    assert "rubric_verdicts_new=0" in capsys.readouterr().out
    assert judge_server.chat_requests == []
