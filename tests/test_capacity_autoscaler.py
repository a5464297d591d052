"""A GPU campaign on a cluster whose GPU nodes do not exist yet: Ray's real autoscaler.

Ray's fake multi-node provider (`RAY_FAKE_CLUSTER=1`) runs the real autoscaler and starts each
"node" it launches as a real raylet on this machine, with the resources its node type declares
(a GPU count included, though no GPU exists: the campaign's actors still run on the CPU). The
head has no GPU and no GPU node is up when `ftsafe run` starts, as on `cluster.yaml`'s cluster
with `min_workers: 0`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark
from tests.fixtures.processes import kill_session, session_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def autoscaler_config(port: int) -> dict:
    """Ray's fake multi-node example config: a CPU head and an autoscaled 1-GPU node type."""
    return {
        "cluster_name": "ftsafe-capacity",
        "max_workers": 1,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_1x": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture
def autoscaling_cluster(tmp_path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A head with the autoscaler, in a session of its own; every process of that session (the
    head's and the nodes the autoscaler starts) is killed at the end, and nothing else."""
    port = free_port()
    config = tmp_path / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(autoscaler_config(port)))
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(REPO),
        "RAY_ADDRESS": "",
        "FTSAFE_AUTOSCALER_CONFIG": str(config),
    }
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            f"--port={port}",
            f"--autoscaling-config={config}",
            "--num-cpus=1",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = head.communicate(timeout=120)
        assert head.returncode == 0, output
        yield f"127.0.0.1:{port}", tmp_path, env
    finally:
        kill_session(head.pid)
        assert not session_processes(head.pid)


def write_campaign(directory: Path, model_dir: Path, num_gpus: float) -> Path:
    write_benchmark(directory / "bench.jsonl", [("c", f"placeholder ask {i}") for i in range(4)])
    spec = {
        "name": "gpu",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"num_gpus": num_gpus, "num_cpus": 1},
    }
    path = directory / f"gpu{num_gpus:g}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ftsafe_run(campaign: Path, address: str, env: dict[str, str]):
    return subprocess.run(
        [sys.executable, "-m", "ftsafe_ray.cli", "run", str(campaign), "--address", address],
        cwd=campaign.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )


@pytest.mark.reliability(
    fault="A GPU campaign on a cluster with no GPU node up yet (autoscaling from zero)",
    outcome="it asks the autoscaler, says it is waiting, and runs once the node is up; an actor "
    "no node type can hold fails at once naming the field",
)
def test_a_gpu_campaign_waits_for_the_autoscaler_then_runs(autoscaling_cluster, tiny_model_dir):
    address, root, env = autoscaling_cluster

    never = ftsafe_run(write_campaign(root, tiny_model_dir, 2), address, env)
    assert never.returncode == 2, never.stderr[-3000:]
    assert "error: generation: each actor needs CPU 1, GPU 2 on one node" in never.stderr
    assert "gpu_1x (CPU 1, GPU 1)" in never.stderr
    assert "capacity: waiting" not in never.stdout

    ran = ftsafe_run(write_campaign(root, tiny_model_dir, 1), address, env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert (
        "capacity: waiting for the autoscaler to start a node for generation (1 actor(s) of "
        "CPU 1, GPU 1) (node type gpu_1x)" in ran.stdout
    )
    assert "capacity: nodes are up" in ran.stdout
    rows = RunStore(root / "run").generations.rows()
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
