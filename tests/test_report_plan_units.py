"""The report counts the plan's units under the plan's labels, with every keyword set.

Answers are written straight into the store (no model runs), then the keyword judge stage and
`ftsafe report` run as a user would run them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.judge.identity import keyword_set_identities
from ftsafe_ray.judge.stage import run_judge_stage
from ftsafe_ray.plan import Plan, build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row, write_benchmark, write_chats

# Half the answers say "I can't help with that": a refusal the study's list does not catch.
ANSWERS = ("I can't help with that.", "Sure, placeholder step one.", "I'm sorry, no.")


def campaign(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    write_chats(tmp_path / "shift.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_benchmark(tmp_path / "one.jsonl", [("cat-a", "shared request"), ("cat-b", "only one")])
    write_benchmark(tmp_path / "two.jsonl", [("cat-a", "shared request"), ("cat-b", "only two")])
    data: dict[str, Any] = {
        "name": "units",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "datasets": [{"name": "shift", "source": "shift.jsonl"}],
        # Two arms with identical data and recipe: one fine-tune, counted under both names.
        "finetunes": [
            {"name": "arm-a", "dataset": "shift", "sizes": [2]},
            {"name": "arm-b", "dataset": "shift", "sizes": [2]},
        ],
        "benchmarks": [
            {"name": "one", "source": "one.jsonl"},
            {"name": "two", "source": "two.jsonl"},
        ],
        "judges": {"keyword": {"sets": ["study", "extended"]}, "rubric": {"enabled": False}},
    }
    data.update(overrides)
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    return data


def plan_of(tmp_path: Path, data: dict[str, Any]) -> Plan:
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    return build_plan(parse_campaign(data), base_dir=tmp_path)


def answer_and_judge(plan: Plan, stored_arm: str = "stale-label") -> RunStore:
    """Store an answer for every distinct unit key still missing, judge, freeze the plan."""
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets))
    done = store.generations.done_keys(None)
    unique = {unit.key: unit for unit in plan.generations if unit.key not in done}
    rows = [
        answer_row(unit, ANSWERS[i % len(ANSWERS)], arm=stored_arm)
        for i, unit in enumerate(unique.values())
    ]
    store.generations.write(rows)
    run_judge_stage(plan, store, PlainProgress(), None)
    return store


def summary(run_dir: Path, *flags: str) -> list[dict[str, str]]:
    assert main(["report", str(run_dir), *flags]) == 0
    with (run_dir / "report" / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_shared_units_are_counted_once_in_each_of_their_groups(tmp_path):
    plan = plan_of(tmp_path, campaign(tmp_path))
    # base + 2 arms, 2 benchmarks × 2 prompts = 12 planned units, fewer distinct keys.
    assert len(plan.generations) == 12
    assert len({u.key for u in plan.generations}) < 12
    store = answer_and_judge(plan)
    assert store.generations.count() == len({u.key for u in plan.generations})
    records = summary(plan.run_dir)
    cells = {(r["arm"], r["benchmark"]): r for r in records}
    assert set(cells) == {(a, b) for a in ("base", "arm-a", "arm-b") for b in ("one", "two")}
    assert all(r["n"] == "2" and r["n_answers"] == "2" for r in records)
    assert (
        cells[("arm-a", "one")]["keyword_asr_study"] == cells[("arm-b", "one")]["keyword_asr_study"]
    )
    # The stored rows' own labels ("stale-label") never reach the report of the plan.
    assert "stale-label" not in {r["arm"] for r in records}


def test_renaming_an_arm_relabels_without_recomputing(tmp_path):
    data = campaign(tmp_path)
    store = answer_and_judge(plan_of(tmp_path, data))
    before = (store.generations.count(), store.judgments.count())
    data["finetunes"][0]["name"] = "renamed"
    data["benchmarks"][1]["kind"] = "benign"
    renamed = plan_of(tmp_path, data)
    store = answer_and_judge(renamed)
    assert (store.generations.count(), store.judgments.count()) == before
    records = summary(renamed.run_dir)
    arms = {r["arm"] for r in records}
    assert "renamed" in arms and "arm-a" not in arms
    assert {r["benchmark_kind"] for r in records if r["benchmark"] == "two"} == {"benign"}


def test_report_covers_the_frozen_plan_and_history_is_a_flag(tmp_path):
    data = campaign(tmp_path)
    answer_and_judge(plan_of(tmp_path, data))
    data["sampling"] = {"max_new_tokens": 64}  # new generation keys: old answers are history
    changed = plan_of(tmp_path, data)
    store = RunStore(changed.run_dir, changed.spec_hash)
    store.freeze_spec(changed.spec.model_dump(mode="json"), changed.spec_hash)
    store.freeze_plan(changed.unit_labels(), keyword_set_identities(changed.keyword_sets))
    records = summary(changed.run_dir)
    # Nothing of the new plan is answered yet; the old answers are not averaged in.
    assert all(r["n"] == "2" and r["n_answers"] == "0" for r in records)
    assert all(r["keyword_asr_study"] == "" for r in records)
    history = summary(changed.run_dir, "--all-history")
    assert {r["arm"] for r in history} == {"stale-label"}
    assert sum(int(r["n_answers"]) for r in history) == store.generations.count()


def test_each_keyword_set_has_its_own_column_and_verdicts(tmp_path):
    plan = plan_of(tmp_path, campaign(tmp_path))
    store = answer_and_judge(plan)
    keyword_rows = [r for r in store.judgments.rows() if r["judge"] == "keyword"]
    assert {r["judge_model"] for r in keyword_rows} == {"study", "extended"}
    # A verdict is keyed by (set, prompt, answer): answers that repeat are judged once per set.
    pairs = {(r["prompt"], r["response"]) for r in store.generations.rows()}
    assert len(keyword_rows) == 2 * len(pairs)
    records = summary(plan.run_dir)
    for record in records:
        # extended catches "I can't help with that", which the study's list misses.
        assert float(record["keyword_asr_study"]) >= float(record["keyword_asr_extended"])
    overall_study = [float(r["keyword_asr_study"]) for r in records]
    overall_extended = [float(r["keyword_asr_extended"]) for r in records]
    assert sum(overall_study) > sum(overall_extended)
    markdown = (plan.run_dir / "report" / "summary.md").read_text()
    assert "kw ASR % study [CI]" in markdown and "kw ASR % extended [CI]" in markdown


def test_a_user_phrase_file_is_a_keyword_set(tmp_path):
    (tmp_path / "phrases.txt").write_text("placeholder step\n")
    data = campaign(tmp_path)
    data["judges"]["keyword"]["sets"] = ["study", {"name": "mine", "path": "phrases.txt"}]
    plan = plan_of(tmp_path, data)
    answer_and_judge(plan)
    records = summary(plan.run_dir)
    assert "keyword_asr_mine" in records[0] and "keyword_asr_extended" not in records[0]


def test_keyword_set_errors_name_the_field(tmp_path):
    from ftsafe_ray.errors import DataError, SpecError

    data = campaign(tmp_path)
    data["judges"]["keyword"]["sets"] = ["study", "studdy"]
    with pytest.raises(SpecError, match=r"judges\.keyword\.sets.*unknown keyword set 'studdy'"):
        plan_of(tmp_path, data)
    data["judges"]["keyword"]["sets"] = [{"name": "mine", "path": "missing.txt"}]
    with pytest.raises(DataError, match=r"judges\.keyword\.sets\.0 \(mine\).*missing\.txt"):
        plan_of(tmp_path, data)


def test_seeds_pooled_by_default_and_split_on_request(tmp_path):
    data = campaign(tmp_path, seeds=[1, 2])
    plan = plan_of(tmp_path, data)
    answer_and_judge(plan)
    pooled = summary(plan.run_dir)
    arm = next(r for r in pooled if r["arm"] == "arm-a" and r["benchmark"] == "one")
    assert (arm["n"], arm["n_prompts"], arm["n_seeds"], arm["seeds"]) == ("4", "2", "2", "1 2")
    split = summary(plan.run_dir, "--by-seed")
    seeds = sorted(r["seed"] for r in split if r["arm"] == "arm-a" and r["benchmark"] == "one")
    assert seeds == ["1", "2"]


def test_study_keyword_asr_in_summary_csv_equals_the_studys_own_rule(tmp_path):
    """The proof: answers from a corpus that hits the study rule's edges (case, curly
    apostrophes, substrings of longer words, refusals the list misses) go through the keyword
    judge stage and `ftsafe report`; every cell's keyword_asr_study is what the study's own
    evaluation would compute on the same answers (tests/fixtures/study_keywords.py)."""
    from tests.fixtures.study_keywords import CORPUS, reference_jailbroken

    prompts = [(f"cat-{i % 3}", f"request {i}") for i in range(len(CORPUS))]
    write_benchmark(tmp_path / "edges.jsonl", prompts)
    data = campaign(tmp_path, benchmarks=[{"name": "edges", "source": "edges.jsonl"}])
    plan = plan_of(tmp_path, data)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets))
    unique = {unit.key: unit for unit in plan.generations}
    # Each model answers every corpus text once, shifted by its own offset, so cells differ.
    targets = list(dict.fromkeys(unit.target.adapter_key for unit in unique.values()))
    answers = {
        key: CORPUS[
            (int(unit.item.item_id[1:]) + 7 * targets.index(unit.target.adapter_key)) % len(CORPUS)
        ]
        for key, unit in unique.items()
    }
    store.generations.write([answer_row(unique[key], text) for key, text in answers.items()])
    run_judge_stage(plan, store, PlainProgress(), None)
    records = summary(plan.run_dir)
    assert records
    for record in records:
        cell = [
            u
            for u in plan.generations
            if u.target.arm == record["arm"] and u.benchmark == record["benchmark"]
        ]
        assert cell
        expected = sum(reference_jailbroken(answers[u.key]) for u in cell) / len(cell)
        assert float(record["keyword_asr_study"]) == pytest.approx(expected, abs=1e-12)
        assert int(record["n_answers"]) == len(cell)
    # Every corpus text was judged, so the equality covers each of the rule's edges.
    assert set(answers.values()) == set(CORPUS) and len(targets) == 2
