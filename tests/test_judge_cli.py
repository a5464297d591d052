"""The judge as a user runs it: `ftsafe run` on a base-only campaign with the tiny model, a
judge endpoint that fails some rows, then `ftsafe run --retry-failed`, `ftsafe plan` and the
report's judge files."""

from __future__ import annotations

import csv

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark
from tests.fixtures.judge_server import server_error, verdict

pytestmark = pytest.mark.slow


def test_run_stores_errors_and_retry_failed_redoes_only_them(
    tmp_path, tiny_model_dir, judge_server, ray_local, capsys
):
    write_benchmark(
        tmp_path / "bench.jsonl", [(f"c{i % 2}", f"placeholder ask {i}") for i in range(4)]
    )
    spec = {
        "name": "judge-cli",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(tiny_model_dir)}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"batch_size": 4, "num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_server.base_url,
                "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
                "model": "judge-test",
                "max_retries": 0,
                "num_actors": 2,
            },
            "prices": {"judge-test": {"input_per_million": 1.0, "output_per_million": 2.0}},
        },
    }
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(spec))

    def fail_ask_1(body):
        return (
            server_error()
            if "placeholder ask 1\n" in body["messages"][-1]["content"]
            else verdict()
        )

    judge_server.set_behaviour(fail_ask_1)
    assert main(["run", str(campaign)]) == 0  # a judge error does not stop the campaign
    store = RunStore(tmp_path / "run")
    rubric = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
    distinct = len({(g["prompt"], g["response"]) for g in store.generations.rows()})
    assert len(rubric) == distinct
    [error] = [r for r in rubric if r["status"] == "error"]
    assert "500" in error["error"] and error["attempts"] == 1
    assert all(r["cost_usd"] > 0 for r in rubric if r["status"] == "ok")
    health = list(csv.DictReader((tmp_path / "run" / "report" / "judge_health.csv").open()))
    assert sum(int(h["error"]) for h in health) == 1
    assert (tmp_path / "run" / "report" / "judge_agreement.csv").is_file()

    judge_server.reset()
    assert main(["run", str(campaign)]) == 0
    assert judge_server.chat_requests == []  # nothing new without --retry-failed

    assert main(["run", str(campaign), "--retry-failed"]) == 0
    assert len(judge_server.chat_requests) == 2  # the endpoint check and the one failed row
    rubric = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
    assert [r["status"] for r in rubric] == ["ok"] * distinct

    capsys.readouterr()
    assert main(["plan", str(campaign)]) == 0
    assert "0 verdict(s) to do" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"rubric verdicts: {distinct} ok" in out and "judge spend: $" in out
