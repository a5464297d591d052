"""Three Ray nodes on one machine (a head with no CPUs and two workers, separate raylets), the
run directory on a real S3-compatible server: actors run on both workers, each node fetches the
adapters it needs into its own cache, and a campaign submitted with `ray job submit` (data and
model on S3 too) that loses a worker mid-run (every process of its raylet SIGKILLed) finishes
on the other, nothing lost or stored twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.store.run_dir import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats
from tests.fixtures.ray_multinode import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).parents[1]


@pytest.fixture
def cluster(s3_server, tmp_path) -> Iterator[LocalCluster]:
    env = {
        **os.environ,
        **s3_server.env,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(REPO),
        "RAY_ADDRESS": "",
    }
    cluster = LocalCluster(env)
    try:
        # A job's driver runs on the head: its node cache is its own too.
        cluster.start_head(dashboard=True, env={"FTSAFE_CACHE_DIR": str(tmp_path / "head-cache")})
        for name in ("worker_a", "worker_b"):
            cluster.add_worker(name, 2, {"FTSAFE_CACHE_DIR": str(tmp_path / f"{name}-cache")})
        yield cluster
    finally:
        cluster.stop()


def write_campaign(root: Path, model_dir: Path, run_uri: str, seeds: list[int]) -> Path:
    write_chats(
        root / "d.jsonl", [(f"placeholder task {i}", "placeholder reply") for i in range(4)]
    )
    write_benchmark(root / "b.jsonl", [("c", f"placeholder ask {i}") for i in range(6)])
    spec = {
        "name": "multinode",
        "output_dir": run_uri,
        "seeds": seeds,
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": str(root / "d.jsonl")}],
        "finetunes": [
            {
                "name": "shift",
                "dataset": "d",
                "sizes": [2, 4],
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "train": {"epochs": 3, "batch_size": 2, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": str(root / "b.jsonl")}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"num_cpus": 1, "num_actors": 2, "batch_size": 3},
        "finetune_resources": {"num_cpus": 1, "num_actors": 2},
    }
    path = root / f"campaign-{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submitted_project(root: Path, s3_server, bucket: str, model_dir: Path) -> Path:
    """What a user submits: jobs/run_campaign.py and a campaign whose run directory, data and
    model are all on S3 (uploaded here), so nothing of this machine's disk is named."""
    (root / "jobs").mkdir(parents=True)
    (root / "campaigns").mkdir()
    shutil.copy(REPO / "jobs" / "run_campaign.py", root / "jobs")
    local = write_campaign(root, model_dir, f"{bucket}/runs/lost", [1, 2])
    spec = yaml.safe_load(local.read_text())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        s3_server.put(f"{bucket}/models/tiny/{path.relative_to(model_dir)}", path.read_bytes())
    spec["models"][0]["path"] = f"{bucket}/models/tiny"
    for section in ("datasets", "benchmarks"):
        source = Path(spec[section][0]["source"])
        s3_server.put(f"{bucket}/data/{source.name}", source.read_bytes())
        spec[section][0]["source"] = f"{bucket}/data/{source.name}"
        source.unlink()
    local.unlink()
    (root / "campaigns" / "lost.yaml").write_text(yaml.safe_dump(spec))
    return root


def cluster_cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`ray ARGS` against this cluster's job API."""
    assert cluster.dashboard is not None
    env = {**cluster.env, "RAY_ADDRESS": cluster.dashboard}
    done = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def job_api(cluster: LocalCluster, path: str) -> dict:
    with urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/{path}", timeout=30) as reply:
        return json.loads(reply.read())


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    return str(job_api(cluster, submission_id)["status"])


def job_logs(cluster: LocalCluster, submission_id: str) -> str:
    return str(job_api(cluster, f"{submission_id}/logs")["logs"])


def wait_for(condition, timeout_s: float, cluster: LocalCluster, submission_id: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{job_logs(cluster, submission_id)[-4000:]}")
        status = job_status(cluster, submission_id)
        if status not in ("PENDING", "RUNNING") and not condition():
            raise AssertionError(f"job {status}:\n{job_logs(cluster, submission_id)[-4000:]}")
        time.sleep(0.5)


def run_driver(campaign: Path, cluster: LocalCluster, cache: Path) -> subprocess.Popen[str]:
    env = {**cluster.env, "FTSAFE_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftsafe_ray.cli",
            "run",
            str(campaign),
            "--address",
            cluster.address,
        ],
        cwd=campaign.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def raw_rows(store: RunStore, table: str) -> list[dict]:
    shards = sorted((store.root / table).glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(s) for s in shards).to_pylist() if shards else []


@pytest.mark.reliability(
    fault="A worker node lost mid-run (every process of its raylet SIGKILLed), three nodes, "
    "submitted with `ray job submit`, run directory, data and model on S3",
    outcome="the campaign finishes on the other worker: every unit stored once, none lost",
)
def test_actors_spread_over_workers_and_a_lost_worker_loses_nothing(
    cluster, s3_server, tmp_path, tiny_model_dir
):
    bucket = s3_server.make_bucket("multinode")
    work = tmp_path / "work"
    work.mkdir()

    # Both workers up: fine-tunes and answers come from both.
    campaign = write_campaign(work, tiny_model_dir, f"{bucket}/runs/spread", [1])
    driver = run_driver(campaign, cluster, tmp_path / "head-cache")
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-4000:]
    store = RunStore(tmp_path / "check-spread", remote=f"{bucket}/runs/spread")
    store.sync_down()
    finetunes, generations = store.finetunes.rows(), store.generations.rows()
    assert {r["status"] for r in finetunes} == {"ok"} and len(finetunes) == 2
    assert len({r["node"] for r in finetunes}) == 2, finetunes
    assert len(generations) == 18 and {r["status"] for r in generations} == {"ok"}
    assert len({r["node"] for r in generations}) == 2
    # Each worker fetched the adapters it generated with into its own cache.
    for name in ("worker_a", "worker_b"):
        assert list((tmp_path / f"{name}-cache" / "objects").rglob("adapter_model.safetensors"))

    # Submitted with `ray job submit`, as users launch, with the data and the model on S3
    # too; worker b lost once fine-tuning is under way: the job finishes on worker a.
    project = submitted_project(work / "project", s3_server, bucket, tiny_model_dir)
    job = cluster_cli(cluster, "job", "submit", "--no-wait", "--submission-id", "lost",
        "--working-dir", str(project),
        "--", "python", "jobs/run_campaign.py", "campaigns/lost.yaml",
    )  # fmt: skip
    assert "lost" in job.stdout, job.stdout
    wait_for(lambda: "[fine-tune] start" in job_logs(cluster, "lost"), 300, cluster, "lost")
    time.sleep(2.0)  # mid-training
    cluster.lose("worker_b")
    wait_for(lambda: job_status(cluster, "lost") != "RUNNING", 600, cluster, "lost")
    logs = job_logs(cluster, "lost")
    assert job_status(cluster, "lost") == "SUCCEEDED", logs[-4000:]
    assert f"results in {bucket}/runs/lost" in logs

    store = RunStore(tmp_path / "check-lost", remote=f"{bucket}/runs/lost")
    store.sync_down()
    finetunes, generations = store.finetunes.rows(), store.generations.rows()
    assert len(finetunes) == 4 and {r["status"] for r in finetunes} == {"ok"}, finetunes
    assert len(generations) == 30 and {r["status"] for r in generations} == {"ok"}
    # Nothing stored twice: one raw row per key in every table.
    for table in ("finetunes", "generations", "judgments"):
        counts = Counter(row["key"] for row in raw_rows(store, table))
        assert max(counts.values()) == 1, (table, counts.most_common(3))
    survivors = {r["node"] for r in generations}
    assert len(survivors) >= 1
