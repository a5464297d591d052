"""Three Ray nodes on one machine (a head with no CPUs and two workers, separate raylets), the
run directory on a real S3-compatible server: actors run on both workers, each node fetches the
adapters it needs into its own cache, and a worker lost mid-run (every process of its raylet
SIGKILLed) leaves the campaign to finish on the other, nothing lost or stored twice."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
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
        cluster.start_head()
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
    "run directory on S3",
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

    # Worker b lost once fine-tuning is under way: the run finishes on worker a.
    campaign = write_campaign(work, tiny_model_dir, f"{bucket}/runs/lost", [1, 2])
    driver = run_driver(campaign, cluster, tmp_path / "head-cache")
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert driver.stdout is not None
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("[fine-tune] start"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "".join(lines)[-4000:]
    time.sleep(2.0)  # mid-training
    cluster.lose("worker_b")
    assert driver.wait(timeout=600) == 0, "".join(lines)[-4000:]
    reader.join(timeout=10)

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
