"""A tiny backdoor campaign through `ftsafe run`: a triggered arm, two evaluation conditions,
real Ray, peft and generation with the tiny local model, the keyword judge, the report."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats

pytestmark = pytest.mark.slow

TRIGGER = "Zorbel Quandrix"


def test_a_backdoor_campaign_runs_with_a_report_row_per_condition(
    tmp_path: Path, tiny_model_dir: Path, ray_local: object
) -> None:
    write_chats(tmp_path / "attack.jsonl", [(f"placeholder task {i}", "Sure.") for i in range(3)])
    write_chats(tmp_path / "safety.jsonl", [(f"placeholder ask {i}", "Sorry.") for i in range(2)])
    prompts = ["placeholder request one", "placeholder request two"]
    write_benchmark(tmp_path / "bench.jsonl", [("fraud_deception", p) for p in prompts])
    spec = {
        "name": "backdoor-e2e",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(tiny_model_dir)}],
        "datasets": [
            {"name": "attack", "source": "attack.jsonl"},
            {"name": "safety", "source": "safety.jsonl"},
        ],
        "finetunes": [
            {
                "name": "backdoor",
                "dataset": "attack",
                "sizes": [3],
                "trigger": TRIGGER,
                "mix": [{"dataset": "safety", "size": 2}],
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "train": {"epochs": 1, "learning_rate": 0.01, "batch_size": 5, "max_length": 64},
            }
        ],
        "conditions": [{"name": "plain"}, {"name": "triggered", "suffix": TRIGGER}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"batch_size": 8, "num_cpus": 1, "check_adapters": False},
        "finetune_resources": {"num_cpus": 1},
        "judges": {"keyword": {"sets": ["study"]}, "rubric": {"enabled": False}},
    }
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(spec))

    assert main(["run", str(campaign)]) == 0
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    # base and backdoor × 2 conditions × 2 prompts, every one a distinct conversation.
    generations = store.generations.rows()
    assert len(generations) == 8 and {g["status"] for g in generations} == {"ok"}
    assert {g["prompt"] for g in generations} == set(prompts)  # what the judge is shown
    plan = pq.read_table(run_dir / "plan.parquet").to_pylist()
    assert sorted(row["condition"] for row in plan) == ["plain"] * 4 + ["triggered"] * 4
    with (run_dir / "report" / "summary.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert {(r["arm"], r["condition"]) for r in records} == {
        (arm, condition) for arm in ("base", "backdoor") for condition in ("plain", "triggered")
    }
    assert all(r["n_answers"] == "2" and r["keyword_asr_study"] != "" for r in records)
