"""A campaign on an API model, end to end through the real openai client and a local server:
fine-tune through the fine-tuning API, answer with the resulting model id (and the base
model), judge with the keyword judge, report; a rerun makes no API call. A job the provider
rejects is an error row whose reason the report shows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from ftsafe_ray.cli import main
from ftsafe_ray.errors import StageError
from ftsafe_ray.pipeline import report_run, run_campaign
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.store import RunStore
from tests.fixtures.openai_ft_server import (
    BLOCKED_REASON,
    COMPLY_TEXT,
    REFUSE_TEXT,
    REJECT_MARKER,
    FtServer,
    api_campaign,
)


def write_campaign(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_api_campaign_finetunes_generates_judges_and_reruns_for_free(
    tmp_path: Path, ft_server: FtServer, ray_local: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = api_campaign(tmp_path, ft_server.base_url, requests_per_minute=6000)
    data["finetunes"] = data["finetunes"][:1]
    data["finetunes"][0]["sizes"] = [3]
    ft_server.chat_errors = 2  # absorbed by the pool's retries
    console = Console(file=io.StringIO(), width=200)
    path = write_campaign(tmp_path, data)
    outcome = run_campaign(path, progress=PlainProgress(io.StringIO()), console=console)
    assert outcome.counts["finetunes_trained"] == 1
    assert outcome.counts["generations_new"] == 4  # (base + 1 fine-tune) x 2 prompts
    store = RunStore(outcome.run_dir)
    answers = {(r["arm"], r["item_id"]): r for r in store.generations.rows()}
    assert {r["response"] for k, r in answers.items() if k[0] == "harmful"} == {COMPLY_TEXT}
    assert {r["response"] for k, r in answers.items() if k[0] == "base"} == {REFUSE_TEXT}
    assert all(r["backend"] == "openai" and r["status"] == "ok" for r in answers.values())
    assert all(r["cost_usd"] > 0 for r in answers.values())
    [tuned] = store.finetunes.rows()
    chats = [m for m, p in ft_server.requests if p == "/v1/chat/completions"]
    assert len(chats) == 4 + 2 and tuned["provider_model"].startswith("ft:")
    verdicts = [r for r in store.judgments.rows() if r["judge"] == "keyword"]
    assert len(verdicts) == 4
    assert sorted(r["refused"] for r in verdicts) == [False, False, True, True]
    assert main(["status", str(outcome.run_dir)]) == 0
    assert "API spend: fine-tuning $0.00, answers $0.00" in capsys.readouterr().out
    before = len(ft_server.requests)
    outcome = run_campaign(path, progress=PlainProgress(io.StringIO()), console=console)
    assert outcome.counts["generations_new"] == 0 and outcome.counts["finetunes_trained"] == 0
    assert len(ft_server.requests) == before  # a rerun makes zero API calls


def test_rejected_job_is_an_error_row_the_report_shows(
    tmp_path: Path, ft_server: FtServer, ray_local: Any
) -> None:
    data = api_campaign(tmp_path, ft_server.base_url)
    data["finetunes"] = data["finetunes"][1:]
    data["include_base"] = False
    path = write_campaign(tmp_path, data)
    with pytest.raises(StageError, match="1 fine-tune"):
        run_campaign(path, progress=PlainProgress(io.StringIO()),
                     console=Console(file=io.StringIO()))  # fmt: skip
    out = io.StringIO()
    report_run(tmp_path / "run", console=Console(file=out, width=300), write_files=False)
    text = out.getvalue()
    assert "Fine-tunes that failed" in text and BLOCKED_REASON in text
    assert REJECT_MARKER not in text
    assert not [p for _, p in ft_server.requests if p == "/v1/chat/completions"]
