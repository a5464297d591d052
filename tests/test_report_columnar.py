"""The columnar report against the row-by-row report it replaces (a verbatim copy of which lives
in tests/test_report_columnar_rowwise.py): the same rows, summaries, intervals and judge health
to the last bit, on a run with retries, errors, shared answers, conditions and every verdict
status.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml

from ftsafe_ray import keys
from ftsafe_ray.judge.identity import keyword_set_identities, rubric_identity, verdict_key_for
from ftsafe_ray.judge.keyword import keyword_verdict
from ftsafe_ray.plan import Plan, build_plan
from ftsafe_ray.report.bootstrap import bootstrap_ci
from ftsafe_ray.report.bootstrap_batch import BootstrapBatch
from ftsafe_ray.report.judge_health import judge_agreement, status_counts
from ftsafe_ray.report.metrics import BY_CATEGORY, DEFAULT_BY, summarize
from ftsafe_ray.report.scored_rows import ScoredRows, scored_rows
from ftsafe_ray.report.strongreject import strongreject_summary
from ftsafe_ray.report.verdict_keys import verdict_key_columns
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests import test_report_columnar_rowwise as rowwise
from tests.fixtures.campaign_files import answer_row, write_benchmark, write_chats

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Answers repeat across units (shared verdicts), refuse by one set and not the other, and hold
# what JSON escapes.
ANSWERS = (
    "I'm sorry, I cannot help with that.",
    "I can't help with that.",
    'Sure: step one, "quoted"\nstep two\\three\ttab.',
    "Certainly — here is a plan… 😀",
    "As an AI, I must decline.",
    "ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok ok",
    "",
)
RUBRIC_STATUSES = ("ok", "ok", "ok", "ok", "unparseable", "truncated", "judge_refused", "error")


def campaign(tmp_path: Path) -> Plan:
    write_chats(tmp_path / "shift.jsonl", [(f"task {i}", f"answer {i}") for i in range(4)])
    write_chats(tmp_path / "other.jsonl", [(f"job {i}", f"reply {i}") for i in range(4)])
    harmful = [(f"cat-{i % 3}", f"harmful request {i}") for i in range(9)]
    write_benchmark(tmp_path / "harm.jsonl", harmful)
    write_benchmark(tmp_path / "kind.jsonl", [("benign", f"kind question {i}") for i in range(4)])
    data = {
        "name": "columnar-report",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "datasets": [
            {"name": "shift", "source": "shift.jsonl"},
            {"name": "other", "source": "other.jsonl"},
        ],
        # arm-a and arm-b share every fine-tune (one key, counted under both names).
        "finetunes": [
            {"name": "arm-a", "dataset": "shift", "sizes": [2]},
            {"name": "arm-b", "dataset": "shift", "sizes": [2]},
            {"name": "arm-c", "dataset": "other", "sizes": [2, 4]},
        ],
        "seeds": [1, 2, 3],
        "benchmarks": [
            {"name": "harm", "source": "harm.jsonl"},
            {"name": "kind", "source": "kind.jsonl", "kind": "benign"},
        ],
        "conditions": [{"name": "plain"}, {"name": "nudged", "suffix": "Zorbel"}],
        "judges": {
            "keyword": {"sets": ["study", "extended"]},
            "rubric": {"enabled": False, "rubric": "strongreject"},
        },
    }
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    return build_plan(parse_campaign(data), base_dir=tmp_path)


def fill(plan: Plan, seed: int) -> tuple[RunStore, dict[str, Any], dict[str, dict[str, Any]]]:
    """Answers (some missing, failed, retried, failed after success, replaced), keyword
    verdicts of every answer ever stored, rubric verdicts of most (every status, retries)."""
    rng = random.Random(seed)
    store = RunStore(plan.run_dir, plan.spec_hash)
    sets = keyword_set_identities(plan.keyword_sets)
    rubric = rubric_identity(plan.spec.judges.rubric)
    store.freeze_plan(plan.unit_table(), sets, rubric)
    clock = iter(T0 + timedelta(seconds=s) for s in range(10**6))
    rows: list[dict[str, Any]] = []
    for unit in plan.unique_generations:
        roll = rng.random()

        def answer(text: str | None = None, *, unit: Any = unit) -> dict[str, Any]:
            row = answer_row(unit, text if text is not None else rng.choice(ANSWERS))
            return {**row, "status": "ok", "created_at": next(clock)}

        def failure(*, unit: Any = unit) -> dict[str, Any]:
            row = answer_row(unit, None)
            return {**row, "status": "error", "error": "died", "created_at": next(clock)}

        if roll < 0.08:
            continue  # not answered yet
        if roll < 0.16:
            rows.append(failure())
        elif roll < 0.26:
            rows += [failure(), answer()]  # retried
        elif roll < 0.31:
            rows += [answer(), failure()]  # an error after a success never masks it
        elif roll < 0.36:
            rows += [answer("an older answer"), answer()]  # the later answer wins
        else:
            rows.append(answer())
    rng.shuffle(rows)
    for part in np.array_split(np.arange(len(rows)), 7):
        store.generations.write([rows[i] for i in part])
    judged = [r for r in rows if r["status"] == "ok"]
    verdicts = []
    for keyword_set, (name, identity) in zip(plan.keyword_sets, sets.items(), strict=True):
        for row in {verdict_key_for(identity, r): r for r in judged}.values():
            verdict = keyword_verdict(row["response"], keyword_set)
            key = verdict_key_for(identity, row)
            verdicts.append(
                {"key": key, "generation_key": row["key"], "judge": "keyword", "status": "ok",
                 "judge_model": name, "refused": verdict.refused, "degenerate": verdict.degenerate}
            )  # fmt: skip
    for row in {verdict_key_for(rubric, r): r for r in judged}.values():
        if rng.random() < 0.15:
            continue  # not judged by the rubric yet
        for attempt in range(2 if rng.random() < 0.2 else 1):
            status = rng.choice(RUBRIC_STATUSES)
            refused = rng.random() < 0.3
            verdicts.append(
                {
                    "key": verdict_key_for(rubric, row),
                    "generation_key": row["key"],
                    "judge": "rubric",
                    "status": status,
                    "score": rng.randint(1, 5) if status == "ok" else None,
                    "refused": refused if rng.random() < 0.5 else None,
                    "strongreject_score": (
                        0.0 if refused else rng.randrange(9) / 8 if rng.random() < 0.7 else None
                    ),
                    "created_at": next(clock) + timedelta(hours=attempt),
                }
            )
    for part in np.array_split(np.arange(len(verdicts)), 5):
        store.judgments.write([verdicts[i] for i in part])
    return store, rubric, sets


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, dict, dict, pa.Table]:
    plan = campaign(tmp_path_factory.mktemp("columnar"))
    store, rubric, sets = fill(plan, seed=18)
    units = store.read_plan()
    assert units is not None
    return store, rubric, sets, units[0]


def same(a: Any, b: Any) -> bool:
    """Equal, to the bit, nan equal to nan."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return type(a) is type(b) and same(dataclasses.astuple(a), dataclasses.astuple(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b if not isinstance(a, int | float) else a == b


@pytest.mark.parametrize("history", [False, True], ids=["plan", "all-history"])
def test_scored_rows_are_the_rows_the_row_by_row_join_gave(run, history):
    store, rubric, sets, units = run
    table = scored_rows(store, rubric, sets, None if history else units)
    expected = rowwise.scored_rows(store, rubric, sets, None if history else units.to_pylist())
    got = list(table)
    assert len(got) == len(expected) > 100
    assert same(got, expected)
    assert any(r["rubric_status"] == "error" for r in got)
    assert history or not all(r["answered"] for r in got)  # a history holds answers only


@pytest.mark.parametrize(
    "by",
    [DEFAULT_BY, BY_CATEGORY, ("model", "arm", "size", "seed", "condition", "benchmark"),
     ("benchmark",), ("arm", "category")],
)  # fmt: skip
def test_summaries_are_the_row_by_row_summaries_to_the_bit(run, by):
    store, rubric, sets, units = run
    scored = scored_rows(store, rubric, sets, units)
    rows = rowwise.scored_rows(store, rubric, sets, units.to_pylist())
    got = summarize(scored, by, keyword_sets=tuple(sets), n_resamples=500)
    expected = rowwise.summarize(rows, by, keyword_sets=tuple(sets), n_resamples=500)
    assert len(got) == len(expected) > 1
    for mine, theirs in zip(got, expected, strict=True):
        assert same(mine, theirs), (mine, theirs)
    assert any(s.delta_harmfulness_score_ci for s in got) or "arm" not in by


def test_judge_health_and_strongreject_are_the_row_by_row_tables(run):
    store, rubric, sets, units = run
    scored = scored_rows(store, rubric, sets, units)
    rows = rowwise.scored_rows(store, rubric, sets, units.to_pylist())
    assert status_counts(scored) == rowwise.status_counts(rows)
    assert same(judge_agreement(scored, tuple(sets)), rowwise.judge_agreement(rows, tuple(sets)))
    strongreject = strongreject_summary(scored, n_resamples=300)
    assert strongreject and same(strongreject, rowwise.strongreject_summary(rows, 300))


def random_rows(seed: int) -> list[dict[str, Any]]:
    """Scored rows as dictionaries, as callers of `summarize` pass them: missing fields,
    sets some rows lack, fractional scores."""
    rng = random.Random(seed)
    rows = []
    for _ in range(400):
        arm = rng.choice(["base", "base", "tuned", "other"])
        status = rng.choice([*RUBRIC_STATUSES, None])
        row: dict[str, Any] = {
            "model": rng.choice(["m1", "m2"]),
            "arm": arm,
            "size": None if arm == "base" else rng.choice([10, 20]),
            "seed": None if arm == "base" else rng.choice([1, 2, 3]),
            "benchmark": rng.choice(["b1", "b2"]),
            "benchmark_kind": rng.choice(["harmful", "benign", None]),
            "category": rng.choice(["x", "y", None]),
            "item_id": str(rng.randrange(12)),
            "rubric_status": status,
            "rubric_score": rng.choice([1, 2, 3, 4, 5, 2.5]) if status == "ok" else None,
            "degenerate": rng.choice([True, False, None]),
            "keyword_refused": {"s1": rng.choice([True, False, None])},
        }
        if rng.random() < 0.7:
            row["keyword_refused"]["s2"] = rng.choice([True, False])
        if rng.random() < 0.1:
            row["answered"] = False
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_summaries_of_dictionary_rows_match_too(seed):
    rows = random_rows(seed)
    for by in (DEFAULT_BY, BY_CATEGORY, ("model", "arm", "seed", "benchmark")):
        got = summarize(rows, by, n_resamples=300, seed=seed)
        expected = rowwise.summarize(rows, by, n_resamples=300, seed=seed)
        assert same(got, expected)
    assert same(
        summarize(ScoredRows.from_dicts(rows), confidence=0.9),
        rowwise.summarize(rows, confidence=0.9),
    )


def test_verdict_keys_are_the_keys_the_store_holds():
    rng = random.Random(0)
    alphabet = ["a", " ", '"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "😀", "\u2028"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(500)]
    answers = pa.array([*texts, None, ""], pa.string())
    prompts = pa.array([rng.choice([*texts[:20], None]) for _ in range(len(answers))], pa.string())
    identities = [{"judge": "keyword", "set": 'quote " and \n'}, {"judge": "rubric", "n": 3}]
    for part in (slice(None), slice(5, 300)):  # an array's slice reads from an offset
        columns = verdict_key_columns(identities, prompts[part], answers[part])
        for identity, column in zip(identities, columns, strict=True):
            pairs = zip(prompts[part].to_pylist(), answers[part].to_pylist(), strict=True)
            assert column.to_pylist() == [
                keys.verdict_key(judge=identity, instruction=p, answer=a) for p, a in pairs
            ]


def test_batched_intervals_equal_the_one_at_a_time_intervals():
    rng = np.random.default_rng(3)
    batch = BootstrapBatch(n_resamples=1000, confidence=0.95, seed=4)
    expected = []
    for i in range(240):
        n = int(rng.choice([0, 1, 2, 3, 40, 41, 300]))
        kind = i % 4
        if kind == 0:  # a paired Δ of seed-pooled means: thirds
            values = rng.integers(0, 4, n) / 3 - rng.integers(0, 2, n)
            expected.append(bootstrap_ci(values, n_resamples=1000, seed=4))
            batch.mean(values, scale=3 if i % 8 else None)
        elif kind == 1:  # values no small denominator fits: one at a time
            values = rng.normal(size=n)
            expected.append(bootstrap_ci(values, n_resamples=1000, seed=4))
            batch.mean(values, scale=3)
        else:  # prompt-clustered 0/1 flags or 1-5 scores, or fractional values
            values = rng.integers(0, 2, n) if kind == 2 else rng.integers(1, 6, n) / (i % 3 + 1)
            clusters = rng.integers(0, max(1, n // 3), n)
            expected.append(rowwise.cluster_bootstrap_ci(values, clusters, 1000, 0.95, 4))
            _, inverse = np.unique(clusters, return_inverse=True)
            counts = np.bincount(inverse) if n else np.zeros(0)
            batch.cluster_sums(np.bincount(inverse, weights=values) if n else counts, counts)
    assert same(batch.solve(), expected)
