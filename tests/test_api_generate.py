"""API generation against a local server through the real openai client: every prompt ends in
exactly one row (an error row when retries run out), and api.budget_usd holds back prompts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ftsafe_ray.generate.stage import run_generate_stage
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.openai_ft_server import REFUSE_TEXT, FtServer, api_campaign


def generate(tmp_path: Path, data: dict[str, Any]) -> tuple[Any, RunStore, str]:
    data = {**data, "finetunes": []}  # the base model alone
    plan = build_plan(parse_campaign(data), tmp_path)
    store = RunStore(plan.run_dir, spec_hash=plan.spec_hash)
    log = io.StringIO()
    return run_generate_stage(plan, store, PlainProgress(log)), store, log.getvalue()


def test_every_prompt_ends_in_one_row_errors_included(tmp_path: Path, ft_server: FtServer) -> None:
    ft_server.chat_errors = 3  # max_retries 1: one of the two prompts fails on both tries
    result, store, _ = generate(tmp_path, api_campaign(tmp_path, ft_server.base_url))
    rows = store.generations.rows()
    assert result.generated == 2 and len(rows) == 2
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["error", "ok"]
    [failed] = [r for r in rows if r["status"] == "error"]
    assert "HTTP 500" in failed["error"] and failed["response"] is None
    [ok] = [r for r in rows if r["status"] == "ok"]
    assert ok["response"] == REFUSE_TEXT and ok["backend"] == "openai"
    assert ft_server.count("POST", "chat/completions") == 4


def test_budget_holds_back_prompts(tmp_path: Path, ft_server: FtServer) -> None:
    data = api_campaign(tmp_path, ft_server.base_url, budget_usd=1e-9)
    result, store, log = generate(tmp_path, data)
    assert result.generated == 0 and store.generations.count() == 0
    assert "2 prompts of gpt not sent" in log and ft_server.count("POST", "chat") == 0
