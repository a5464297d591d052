"""Run directories, datasets and adapters on object storage: a real S3-compatible HTTP server
(moto in server mode), reached through pyarrow's S3 filesystem as a user's AWS bucket would be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.errors import StoreError
from ftsafe_ray.store import JUDGMENTS
from ftsafe_ray.store.remote import (
    COMPLETE_MARKER,
    STARTED_MARKER,
    RemoteDir,
    materialize,
    remote_output,
)
from ftsafe_ray.store.run_dir import RunStore, open_remote_table, open_run
from tests.fixtures.campaign_files import write_benchmark, write_chats

REPO = Path(__file__).parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This "node's" cache of mirrors and fetched objects."""
    path = tmp_path / "node-cache"
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(path))
    return path


def verdicts(start: int, n: int) -> list[dict]:
    return [
        {"key": f"k{i}", "generation_key": f"g{i}", "judge": "keyword", "status": "ok"}
        for i in range(start, start + n)
    ]


def test_a_store_on_s3_publishes_each_shard_and_record_and_reads_back_anywhere(
    s3_server, cache, tmp_path, monkeypatch
):
    uri = s3_server.make_bucket("unit") + "/runs/a"
    first = open_run(uri)
    first.freeze_spec({"name": "a"}, "h1")
    first.judgments.write(verdicts(0, 3))
    first.judgments.write(verdicts(3, 2))
    first.write_manifest(campaign="a")
    keys = s3_server.keys(uri)
    assert "spec.json" in keys and "manifest.json" in keys and "specs/h1.json" in keys
    shards = [k for k in keys if k.startswith("judgments/part-")]
    assert len(shards) == 2 and not any(".inprogress" in k for k in keys)

    # Another machine: a fresh cache, the same URI.
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path / "other-node"))
    second = open_run(uri)
    assert second.root != first.root
    assert {row["key"] for row in second.judgments.rows()} == {f"k{i}" for i in range(5)}
    assert second.read_manifest()["campaign"] == "a"
    second.judgments.write(verdicts(5, 1))
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(cache))
    assert open_run(uri).judgments.count() == 6  # the first mirror picks up the new shard


def test_a_tree_is_complete_only_with_its_marker_and_is_fetched_once_per_node(s3_server, cache):
    uri = s3_server.make_bucket("trees") + "/run/adapters/abc"
    with remote_output(uri) as local:
        local.mkdir(parents=True)
        (local / "adapter_config.json").write_text("{}")
        (local / "weights.bin").write_bytes(b"\x00" * 100)
    assert sorted(s3_server.keys(uri)) == [
        COMPLETE_MARKER,
        STARTED_MARKER,
        "adapter_config.json",
        "weights.bin",
    ]
    # The node that built it keeps its copy: nothing is fetched back.
    copy = materialize(uri)
    assert (copy / "weights.bin").read_bytes() == b"\x00" * 100

    half = s3_server.make_bucket("half") + "/run/adapters/cut"
    s3_server.put(f"{half}/{STARTED_MARKER}", b"uploading\n")  # ours, stopped before the end
    s3_server.put(f"{half}/adapter_config.json", b"{}")
    with pytest.raises(StoreError, match="not completely uploaded"):
        materialize(half)
    assert not list((cache / "objects").glob("*/cut"))
    assert not RemoteDir(half.rsplit("/", 1)[0]).has_tree("cut")


def test_a_model_a_user_uploaded_without_our_markers_is_fetched_as_it_stands(s3_server, cache):
    uri = s3_server.make_bucket("user-models") + "/models/tiny"
    s3_server.put(f"{uri}/config.json", b"{}")  # as `aws s3 sync` leaves it
    s3_server.put(f"{uri}/sub/weights.bin", b"\x01" * 10)
    copy = materialize(uri)
    assert (copy / "config.json").read_bytes() == b"{}"
    assert (copy / "sub" / "weights.bin").read_bytes() == b"\x01" * 10
    with pytest.raises(StoreError, match="no such object"):
        materialize(s3_server.make_bucket("empty") + "/models/none")


def test_a_failed_build_publishes_nothing(s3_server, cache):
    uri = s3_server.make_bucket("failed") + "/run/adapters/x"
    with pytest.raises(RuntimeError), remote_output(uri) as local:
        local.mkdir(parents=True)
        (local / "partial.bin").write_bytes(b"1")
        raise RuntimeError("out of memory")
    assert s3_server.keys(uri) == []
    assert not RemoteDir(uri.rsplit("/", 1)[0]).has_tree("x")


def test_a_shared_verdict_cache_on_s3_reads_and_publishes_shards(s3_server, cache):
    uri = s3_server.make_bucket("cache") + "/verdicts"
    open_remote_table(uri, JUDGMENTS).write(verdicts(0, 2))
    table = open_remote_table(uri, JUDGMENTS)
    assert table.done_keys() == {"k0", "k1"}


def write_campaign(root: Path, model_dir: Path, bucket: str, s3_server) -> Path:
    """A campaign whose data and run directory are all on S3; the file itself is local."""
    write_chats(
        root / "d.jsonl", [(f"placeholder task {i}", "placeholder reply") for i in range(4)]
    )
    write_benchmark(root / "b.jsonl", [("c", f"placeholder ask {i}") for i in range(3)])
    s3_server.put(f"{bucket}/data/d.jsonl", (root / "d.jsonl").read_bytes())
    s3_server.put(f"{bucket}/data/b.jsonl", (root / "b.jsonl").read_bytes())
    spec = {
        "name": "on-s3",
        "output_dir": f"{bucket}/runs/on-s3",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": f"{bucket}/data/d.jsonl"}],
        "finetunes": [
            {
                "name": "shift",
                "dataset": "d",
                "sizes": [4],
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "train": {"epochs": 1, "batch_size": 2, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": f"{bucket}/data/b.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"num_cpus": 1},
        "finetune_resources": {"num_cpus": 1},
    }
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ftsafe(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftsafe_ray.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )


@pytest.mark.slow
def test_a_campaign_runs_with_its_data_and_run_directory_on_s3(s3_server, tmp_path, tiny_model_dir):
    bucket = s3_server.make_bucket("campaign")
    work = tmp_path / "work"
    work.mkdir()
    campaign = write_campaign(work, tiny_model_dir, bucket, s3_server)
    env = {
        **os.environ,
        **s3_server.env,
        "PYTHONPATH": str(REPO),
        "RAY_ADDRESS": "",
        "FTSAFE_CACHE_DIR": str(tmp_path / "head-cache"),
    }
    ran = ftsafe(["run", str(campaign)], work, env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    run = f"{bucket}/runs/on-s3"
    keys = s3_server.keys(run)
    for table in ("finetunes", "generations", "judgments"):
        assert any(k.startswith(f"{table}/part-") for k in keys), (table, keys)
    for record in ("spec.json", "plan.parquet", "manifest.json", "report/summary.csv"):
        assert record in keys, (record, keys)
    adapters = [k for k in keys if k.startswith("adapters/")]
    assert any(k.endswith("/adapter_model.safetensors") for k in adapters)
    assert any(k.endswith(f"/{COMPLETE_MARKER}") for k in adapters)
    assert not (work / "runs").exists()  # nothing landed beside the campaign file

    # Another machine (a fresh cache): the report reads the bucket; a rerun redoes nothing.
    env["FTSAFE_CACHE_DIR"] = str(tmp_path / "laptop-cache")
    report = ftsafe(["report", run, "--no-files"], work, env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "shift" in report.stdout
    rerun = ftsafe(["run", str(campaign)], work, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    shards = {k for k in keys if "/part-" in k}
    assert {k for k in s3_server.keys(run) if "/part-" in k} == shards  # nothing redone
    store = RunStore(tmp_path / "check", remote=run)
    store.sync_down()
    generations = store.generations.rows()
    assert len(generations) == 6 and {r["status"] for r in generations} == {"ok"}
    local_shards = sorted((store.root / "generations").glob("part-*.parquet"))
    assert sum(pq.read_table(s).num_rows for s in local_shards) == 6  # none generated twice
