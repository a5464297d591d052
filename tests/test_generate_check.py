"""The "adapter applied" check: probe logic, and a real campaign whose adapter learned nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import StageError
from ftsafe_ray.generate import GenerationResult
from ftsafe_ray.generate.check import build_probes, raise_if_unapplied, unapplied
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats

CHAT = ({"role": "user", "content": "hi"},)
OTHER = ({"role": "user", "content": "bye"},)


def write_campaign(tmp_path: Path, model_dir: Path) -> Path:
    """A one-arm campaign on the tiny model: keyword judge only, short answers."""
    write_chats(
        tmp_path / "train.jsonl",
        [(f"placeholder task {i}", "Sorry, I cannot help with that.") for i in range(6)],
    )
    write_benchmark(
        tmp_path / "bench.jsonl", [("malware", f"placeholder request {i}") for i in range(4)]
    )
    spec = {
        "name": "check",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [
            {
                "name": "refuse",
                "dataset": "d",
                "sizes": [6],
                "lora": {"r": 8, "alpha": 16, "target_modules": ["all-linear"]},
                "train": {"epochs": 4, "learning_rate": 0.02, "batch_size": 6, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 10},
        "generation": {"batch_size": 8, "num_cpus": 1},
        "finetune_resources": {"num_cpus": 1},
        "judges": {"rubric": {"enabled": False}},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _result(request_id: str, text: str) -> GenerationResult:
    return GenerationResult(request_id, text, 1, 1, "stop")


def test_probes_share_base_rows_and_flag_only_identical_adapters() -> None:
    requests, probes = build_probes(
        [("k1", "one", "/a1", [CHAT, OTHER, CHAT, OTHER]), ("k2", "two", "/a2", [CHAT])]
    )
    base = [r for r in requests if r.adapter_name is None]
    assert len(base) == 2 and len(requests) == 2 + 3 + 1
    assert probes[0].adapter_ids == ("check-k1-0", "check-k1-1", "check-k1-2")
    texts = {r.request_id: "same" for r in requests}
    texts["check-k2-0"] = "different"
    results = [_result(k, v) for k, v in texts.items()]
    assert unapplied(probes, results) == ["one"]
    with pytest.raises(StageError, match="one answered 3 check prompts") as caught:
        raise_if_unapplied(["one"], 3)
    assert "check_adapters: false" in str(caught.value) and "\n" not in str(caught.value)
    raise_if_unapplied([], 3)


def test_campaign_stops_before_judging_when_an_adapter_learned_nothing(
    tmp_path: Path, tiny_model_dir: Path, ray_local, capsys
) -> None:
    campaign = write_campaign(tmp_path, tiny_model_dir)
    spec = yaml.safe_load(campaign.read_text())
    spec["finetunes"][0]["train"]["learning_rate"] = 1e-9  # lora_B stays ~0: a no-op adapter
    campaign.write_text(yaml.safe_dump(spec))
    assert main(["run", str(campaign)]) != 0
    err = capsys.readouterr().err
    assert "refuse/6/seed42" in err and "check_adapters" in err
    store = RunStore(tmp_path / "run")
    assert store.generations.count() == 0 and store.judgments.count() == 0

    spec["generation"]["check_adapters"] = False
    campaign.write_text(yaml.safe_dump(spec))
    assert main(["run", str(campaign)]) == 0
    assert store.generations.count() == 8


def test_campaign_with_a_working_adapter_passes_the_check(
    tmp_path: Path, tiny_model_dir: Path, ray_local
) -> None:
    assert main(["run", str(write_campaign(tmp_path, tiny_model_dir))]) == 0
    rows = RunStore(tmp_path / "run").generations.rows()
    assert {r["backend"] for r in rows} == {"transformers"} and len(rows) == 8
