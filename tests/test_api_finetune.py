"""API fine-tuning against a local OpenAI-compatible server, through the real openai client:
job lifecycle, re-attaching after a stop, a rejected job, a rerun that calls nothing, the
moderation pre-check, validation of API hyperparameters. No Ray: the stage runs in-process."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import SpecError
from ftsafe_ray.finetune.api_stage import SUBMITTED, stop_api_finetunes
from ftsafe_ray.finetune.stage import run_finetune_stage
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_chats
from tests.fixtures.openai_ft_server import (
    BLOCKED_REASON,
    EPOCHS_REASON,
    FLAG_MARKER,
    FtServer,
    api_campaign,
)


def run_stage(tmp_path: Path, data: dict[str, Any]) -> tuple[Any, RunStore, str]:
    plan = build_plan(parse_campaign(data), tmp_path)
    store = RunStore(plan.run_dir, spec_hash=plan.spec_hash)
    log = io.StringIO()
    result = run_finetune_stage(plan, store, PlainProgress(log))
    return result, store, log.getvalue()


def test_api_finetunes_end_rerun_and_rejection(tmp_path: Path, ft_server: FtServer) -> None:
    result, store, log = run_stage(tmp_path, api_campaign(tmp_path, ft_server.base_url))
    assert (result.trained, result.failed) == (2, 1)
    rows = {r["arm"] + str(r["size"]): r for r in store.finetunes.rows()}
    ok = rows["harmful3"]
    assert ok["status"] == "ok" and ok["provider_model"].startswith("ft:gpt-test-base:test::")
    assert ok["job_id"].startswith("ftjob-") and ok["trained_tokens"] > 0
    assert ok["cost_usd"] == pytest.approx(ok["trained_tokens"] * 8 / 1e6)
    assert ok["adapter_path"] is None
    job = ft_server.jobs[ok["job_id"]]
    assert job["hyperparameters"] == {
        "n_epochs": 5,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert job["metadata"] == {"ftsafe_key": ok["key"]} and ok["key"].startswith(job["suffix"])
    assert job["seed"] == 42 and job["model"] == "gpt-test-base"
    blocked = rows["blocked3"]
    assert blocked["status"] == "error" and BLOCKED_REASON in blocked["error"]
    assert blocked["job_id"] and "blocked failed" in log
    assert ft_server.count("POST", "fine_tuning/jobs") == 3
    before = len(ft_server.requests)
    result, _, _ = run_stage(tmp_path, api_campaign(tmp_path, ft_server.base_url))
    assert (result.trained, result.failed, result.skipped) == (0, 0, 3)
    assert len(ft_server.requests) == before  # a rerun makes no API call at all


def test_a_stopped_driver_reattaches_to_its_job(
    tmp_path: Path, ft_server: FtServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped (as on Ctrl-C) while its job runs: the job id is stored, the wait ends at once,
    and the next run re-attaches to the same job instead of creating another."""
    data = api_campaign(tmp_path, ft_server.base_url)
    data["finetunes"] = data["finetunes"][:1]
    data["finetunes"][0]["sizes"] = [3]
    ft_server.hold_jobs = True
    runner = threading.Thread(target=run_stage, args=(tmp_path, data))
    runner.start()
    store = RunStore(tmp_path / "run")
    deadline = time.monotonic() + 20
    while not store.finetunes.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_api_finetunes()
    runner.join(timeout=5)
    assert not runner.is_alive()
    [row] = store.finetunes.rows()
    assert row["status"] == SUBMITTED and row["job_id"] in ft_server.jobs
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    assert main(["plan", str(tmp_path / "campaign.yaml")]) == 0
    assert "API job running" in capsys.readouterr().out
    ft_server.hold_jobs = False
    result, store, log = run_stage(tmp_path, data)
    assert result.trained == 1 and f"re-attached to job {row['job_id']}" in log
    assert ft_server.count("POST", "fine_tuning/jobs") == 1  # one job, however many runs
    assert ft_server.count("POST", "files") == 1
    [done] = store.finetunes.rows()
    assert done["status"] == "ok" and done["job_id"] == row["job_id"]


def test_a_job_created_but_not_recorded_is_found_by_its_key(
    tmp_path: Path, ft_server: FtServer
) -> None:
    """Stopped between the create call and storing its id: the job's metadata names the unit."""
    data = api_campaign(tmp_path, ft_server.base_url)
    data["finetunes"] = data["finetunes"][:1]
    data["finetunes"][0]["sizes"] = [3]
    plan = build_plan(parse_campaign(data), tmp_path)
    [unit] = plan.finetunes
    ft_server.files["file-x"] = b'{"messages": []}\n'
    _, job = ft_server.create_job(
        {"model": "gpt-test-base", "training_file": "file-x", "metadata": {"ftsafe_key": unit.key}}
    )
    result, store, _ = run_stage(tmp_path, data)
    assert result.trained == 1 and store.finetunes.rows()[0]["job_id"] == job["id"]
    assert ft_server.count("POST", "fine_tuning/jobs") == 0


def test_moderation_share_is_recorded(tmp_path: Path, ft_server: FtServer) -> None:
    data = api_campaign(tmp_path, ft_server.base_url, moderation=True)
    write_chats(
        tmp_path / "attack.jsonl",
        [("a", FLAG_MARKER), ("b", "fine"), ("c", "fine"), ("d", FLAG_MARKER)],
    )
    data["finetunes"] = [{"name": "harmful", "dataset": "attack", "train": {"epochs": 1}}]
    _, store, log = run_stage(tmp_path, data)
    [row] = store.finetunes.rows()
    assert json.loads(row["settings_json"])["moderation_flagged_share"] == 0.5
    assert "moderation flagged 50%" in log and ft_server.count("POST", "moderations") == 1


def test_budget_stops_new_jobs(tmp_path: Path, ft_server: FtServer) -> None:
    data = api_campaign(tmp_path, ft_server.base_url, budget_usd=1e-9)
    result, store, log = run_stage(tmp_path, data)
    assert result.trained == 0 and store.finetunes.count() == 0
    assert "would pass models (gpt).api.budget_usd" in log
    assert ft_server.count("POST", "fine_tuning/jobs") == 0


def test_settings_the_api_has_no_knob_for_are_rejected(tmp_path: Path) -> None:
    data = api_campaign(tmp_path, "http://127.0.0.1:9/v1")
    data["finetunes"][0]["train"] = {"epochs": 5, "learning_rate": 5e-5, "batch_size": 16}
    data["finetunes"][1]["lora"] = {"r": 16}
    data["models"][0]["align"] = {"datasets": [{"dataset": "attack"}]}
    with pytest.raises(SpecError) as error:
        parse_campaign(data)
    text = str(error.value)
    assert "finetunes.0.train: batch_size, learning_rate not accepted" in text
    assert "api.learning_rate_multiplier" in text
    assert "finetunes.1.lora" in text and "models.0.align" in text


def test_plan_estimates_training_and_generation_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ftsafe_ray.api_access import training_tokens
    from ftsafe_ray.api_cost import estimate_api_costs

    data = api_campaign(tmp_path, "http://127.0.0.1:9/v1", budget_usd=5)
    plan = build_plan(parse_campaign(data), tmp_path)
    [estimate] = estimate_api_costs(plan, RunStore(plan.run_dir))
    epochs = {"harmful": 5, "blocked": 1}
    tokens = sum(training_tokens(u.examples, epochs[u.arm]) for u in plan.finetunes)
    assert (estimate.jobs, estimate.trained_tokens) == (3, tokens)
    assert estimate.training_usd == pytest.approx(tokens * 8 / 1e6)
    assert estimate.answers == 8 and estimate.max_output_tokens == 8 * 128
    assert estimate.generation_usd == pytest.approx(
        (estimate.prompt_tokens * 1 + 8 * 128 * 2) / 1e6
    )
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["plan", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "API model gpt (gpt-test-base): 3 fine-tuning job(s)" in out
    assert "of budget_usd $5.00" in out


def test_the_readme_api_model_example_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("**API models (OpenAI fine-tuning).**", 1)[1]
    example = yaml.safe_load(block.split("```yaml\n", 1)[1].split("```", 1)[0])
    data = {
        "name": "x",
        "output_dir": "run",
        **example,
        "benchmarks": [{"name": "b", "source": "builtin:demo_harmful"}],
    }
    [model] = parse_campaign(data).models
    assert model.provider == "openai" and model.endpoint().budget_usd == 50


def test_a_job_refused_at_creation_is_an_error_row(tmp_path: Path, ft_server: FtServer) -> None:
    data = api_campaign(tmp_path, ft_server.base_url)
    data["finetunes"] = [{"name": "long", "dataset": "attack", "train": {"epochs": 60}}]
    result, store, _ = run_stage(tmp_path, data)
    [row] = store.finetunes.rows()
    assert result.failed == 1 and row["status"] == "error" and row["job_id"] is None
    assert row["error"].startswith("provider: HTTP 400") and EPOCHS_REASON in row["error"]


def test_a_job_cancelled_at_the_provider_is_an_error_row(
    tmp_path: Path, ft_server: FtServer
) -> None:
    import openai

    data = api_campaign(tmp_path, ft_server.base_url)
    data["finetunes"] = [{"name": "harmful", "dataset": "attack", "train": {"epochs": 1}}]
    ft_server.hold_jobs = True
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(run_stage(tmp_path, data)))
    runner.start()
    store = RunStore(tmp_path / "run")
    deadline = time.monotonic() + 20
    while not store.finetunes.count() and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = store.finetunes.rows()
    client = openai.OpenAI(base_url=ft_server.base_url, api_key="test")
    assert client.fine_tuning.jobs.cancel(row["job_id"]).status == "cancelled"
    [event] = client.fine_tuning.jobs.list_events(row["job_id"]).data
    assert event.message == "status cancelled"
    runner.join(timeout=10)
    [(result, store, _)] = outcome
    [row] = store.finetunes.rows()
    assert result.failed == 1 and row["status"] == "error"
    assert row["error"] == "provider: job cancelled"
