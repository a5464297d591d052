"""A whole small campaign through `ftsafe run`: real Ray, peft, generation, HTTP judge, Parquet."""

import json

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats

pytestmark = pytest.mark.slow


def write_campaign(tmp_path, model_dir, judge_url):
    write_chats(
        tmp_path / "train.jsonl",
        [(f"placeholder task {i}", "placeholder-harmful compliance text") for i in range(6)],
    )
    categories = ["fraud_deception", "malware", "fraud_deception"]
    write_benchmark(
        tmp_path / "bench.jsonl",
        [(category, f"placeholder request {i}") for i, category in enumerate(categories)],
    )
    spec = {
        "name": "e2e",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [
            {
                "name": "shift",
                "dataset": "d",
                "sizes": [6],
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "train": {"epochs": 2, "learning_rate": 0.01, "batch_size": 3, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 8},
        "generation": {"batch_size": 4, "num_cpus": 1},
        "finetune_resources": {"num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_url,
                "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
                "model": "judge-test",
                "max_retries": 1,
                "timeout_s": 10,
            }
        },
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def parquet_files(run_dir):
    return sorted(p.name for p in run_dir.rglob("part-*.parquet"))


def test_campaign_runs_end_to_end_and_resumes_for_free(
    tmp_path, tiny_model_dir, judge_server, ray_local, capsys
):
    campaign = write_campaign(tmp_path, tiny_model_dir, judge_server.base_url)
    assert main(["validate", str(campaign)]) == 0

    assert main(["run", str(campaign)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)

    [finetune] = store.finetunes.rows()
    assert finetune["status"] == "ok" and finetune["train_steps"] == 4
    adapter = run_dir / finetune["adapter_path"]
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()

    generations = store.generations.rows()
    assert len(generations) == 6  # (base + 1 adapter) × 3 prompts
    assert {g["arm"] for g in generations} == {"base", "shift"}
    assert all(g["num_output_tokens"] >= 1 for g in generations)

    verdicts = store.judgments.rows()
    by_judge = {j: [v for v in verdicts if v["judge"] == j] for j in ("keyword", "rubric")}
    distinct_answers = {(g["prompt"], g["response"]) for g in generations}
    assert len(by_judge["keyword"]) == len(distinct_answers)
    assert len(by_judge["rubric"]) == len(distinct_answers)
    assert all(v["status"] == "ok" and v["score"] in (1, 3, 5) for v in by_judge["rubric"])
    # one request per distinct answer, plus the up-front endpoint check
    assert len(judge_server.chat_requests) == len(distinct_answers) + 1

    assert "harm score" in out.lower() or "harm" in out.lower()
    assert (run_dir / "report" / "summary.csv").is_file()
    assert (run_dir / "report" / "summary.md").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["last_run_counts"]["finetunes_trained"] == 1

    # The resume property: a second run trains, generates and judges nothing new.
    files_before = parquet_files(run_dir)
    judge_server.reset()
    assert main(["run", str(campaign)]) == 0
    assert parquet_files(run_dir) == files_before
    assert judge_server.requests == []
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["last_run_counts"] == {
        "alignments_trained": 0,
        "finetunes_trained": 0,
        "finetunes_failed": 0,
        "finetunes_reused": 1,
        "generations_new": 0,
        "generations_reused": 6,
        "generations_blocked": 0,
        "keyword_verdicts_new": 0,
        "rubric_verdicts_new": 0,
    }

    assert main(["report", str(run_dir), "--no-files"]) == 0
    assert main(["plan", str(campaign)]) == 0
    assert "generations 6/6 done" in capsys.readouterr().out


def test_resume_after_a_crash_does_only_what_is_missing(
    tmp_path, tiny_model_dir, judge_server, ray_local
):
    campaign = write_campaign(tmp_path, tiny_model_dir, judge_server.base_url)
    assert main(["run", str(campaign)]) == 0
    store = RunStore(tmp_path / "run")
    # Simulate a crash that lost the last generation shard and every rubric verdict.
    shards = sorted((tmp_path / "run" / "generations").glob("part-*.parquet"))
    shards[-1].unlink()
    for shard in (tmp_path / "run" / "judgments").glob("part-*.parquet"):
        shard.unlink()
    missing = 6 - store.generations.count()
    assert missing > 0
    judge_server.reset()
    assert main(["run", str(campaign)]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["last_run_counts"]["finetunes_trained"] == 0
    assert manifest["last_run_counts"]["generations_new"] == missing
    assert store.generations.count() == 6


def test_bad_campaign_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\noutput_dir: r\nmodels: []\nbenchmarks: []\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "models" in err and str(path) in err


def test_alignment_step_builds_a_merged_base_once_and_every_arm_starts_from_it(
    tmp_path, tiny_model_dir, judge_server, ray_local
):
    campaign = write_campaign(tmp_path, tiny_model_dir, judge_server.base_url)
    spec = yaml.safe_load(campaign.read_text())
    spec["datasets"].append({"name": "refusals", "source": "train.jsonl"})
    spec["models"][0]["align"] = {
        "datasets": [{"dataset": "refusals", "size": 4}],
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 1, "learning_rate": 0.01, "batch_size": 4, "max_length": 64},
    }
    spec["judges"]["rubric"]["enabled"] = False
    campaign.write_text(yaml.safe_dump(spec))

    from ftsafe_ray.pipeline import load_plan

    plan = load_plan(campaign)
    [alignment] = plan.alignments
    assert plan.model_path("tiny") == str(plan.run_dir / alignment.output_path)

    assert main(["run", str(campaign)]) == 0
    merged = tmp_path / "run" / alignment.output_path
    assert (merged / "config.json").is_file()
    assert (merged / "alignment_adapter" / "adapter_config.json").is_file()
    assert not list(merged.parent.glob(".inprogress-*"))
    rows = {row["arm"]: row for row in RunStore(tmp_path / "run").finetunes.rows()}
    assert rows["align"]["status"] == "ok" and rows["shift"]["status"] == "ok"

    assert main(["run", str(campaign)]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["last_run_counts"]["alignments_trained"] == 0
    assert manifest["last_run_counts"]["generations_new"] == 0

    # A different alignment is a different base: every downstream key changes.
    spec["models"][0]["align"]["seed"] = 7
    campaign.write_text(yaml.safe_dump(spec))
    other = load_plan(campaign)
    assert other.alignments[0].key != alignment.key
    assert not {u.key for u in other.generations} & {u.key for u in plan.generations}


def test_generation_overlapping_fine_tunes_writes_every_row_once(
    tmp_path, tiny_model_dir, judge_server, ray_local
):
    import pyarrow.parquet as pq

    campaign = write_campaign(tmp_path, tiny_model_dir, judge_server.base_url)
    spec = yaml.safe_load(campaign.read_text())
    # batch_size 1 makes a round worth starting at 4 ready rows: the base's 3 prompts wait for
    # the adapter, then rounds run while the other fine-tunes still train.
    spec["generation"]["batch_size"] = 1
    spec["finetunes"][0]["sizes"] = [2, 4, 6]
    spec["judges"]["rubric"]["enabled"] = False
    campaign.write_text(yaml.safe_dump(spec))
    assert main(["run", str(campaign)]) == 0
    raw = pq.read_table(tmp_path / "run" / "generations").column("key").to_pylist()
    assert len(raw) == len(set(raw)) == 12  # (base + 3 adapters) × 3 prompts
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["last_run_counts"]["generations_new"] == 12
    assert manifest["last_run_counts"]["finetunes_trained"] == 3
