"""Cluster capacity: per node, not cluster totals; nodes an autoscaler can add count."""

from __future__ import annotations

import pytest

from ftsafe_ray.capacity import (
    Demand,
    NodeType,
    actor_demands,
    assess,
    ensure_capacity,
    node_types_from_config,
)
from ftsafe_ray.errors import SpecError
from ftsafe_ray.spec import parse_campaign


def spec(**overrides):
    return parse_campaign(
        {
            "name": "capacity",
            "output_dir": "run",
            "models": [{"name": "m", "path": "/nonexistent/model"}],
            "benchmarks": [{"name": "b", "source": "b.jsonl"}],
            **overrides,
        }
    )


GPU4 = Demand("finetune_resources", {"CPU": 1.0, "GPU": 4.0}, 1)
CPU_HEAD = {"CPU": 8.0}
ONE_GPU_NODE = {"CPU": 8.0, "GPU": 1.0}


def test_four_one_gpu_nodes_do_not_hold_a_four_gpu_actor():
    # The cluster totals 4 GPUs, but an actor runs on one node.
    with pytest.raises(SpecError) as failed:
        assess([GPU4], [CPU_HEAD] + [ONE_GPU_NODE] * 4, [])
    message = str(failed.value)
    assert message.startswith("finetune_resources: each actor needs CPU 1, GPU 4 on one node")
    assert "largest node has GPU 1" in message and "no autoscaler node types" in message
    assert "\n" not in message


def test_an_actor_only_a_node_type_can_hold_waits_for_scaling():
    types = [
        NodeType("gpu_1x", {"CPU": 8.0, "GPU": 1.0}, 8),
        NodeType("gpu_8x", {"CPU": 96.0, "GPU": 8.0}, 2),
    ]
    one_gpu = Demand("generation", {"CPU": 1.0, "GPU": 1.0}, 2)
    capacity = assess([one_gpu, GPU4], [CPU_HEAD], types)
    assert capacity.now == []
    assert capacity.after_scaling == [(one_gpu, ["gpu_1x", "gpu_8x"]), (GPU4, ["gpu_8x"])]


def test_a_node_type_with_no_workers_allowed_does_not_count():
    with pytest.raises(SpecError, match=r"gpu_8x \(CPU 96, GPU 8\)"):
        assess([GPU4], [CPU_HEAD], [NodeType("gpu_8x", {"CPU": 96.0, "GPU": 8.0}, 0)])


def test_demands_come_from_the_spec_fields():
    demands = actor_demands(
        spec(
            finetune_resources={"num_gpus": 1, "num_cpus": 4, "num_actors": 2},
            generation={"num_gpus": 0, "num_cpus": 2},
        )
    )
    assert demands == [
        Demand("finetune_resources", {"CPU": 4.0, "GPU": 1.0}, 2),
        Demand("generation", {"CPU": 2.0}, 1),
    ]


def test_node_types_of_a_cluster_launcher_config_leave_the_head_out():
    config = {
        "max_workers": 4,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8}},
            "gpu_1x": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 8},
            "gpu_8x": {"resources": {"CPU": 96, "GPU": 8}, "max_workers": 2},
        },
    }
    assert node_types_from_config(config) == [
        NodeType("gpu_1x", {"CPU": 8.0, "GPU": 1.0}, 4),  # capped by the cluster's max_workers
        NodeType("gpu_8x", {"CPU": 96.0, "GPU": 8.0}, 2),
    ]


def test_a_gpu_campaign_on_a_cpu_cluster_without_autoscaler_fails_at_once(ray_local):
    logged: list[str] = []
    with pytest.raises(SpecError, match=r"^generation: each actor needs CPU 1, GPU 1"):
        ensure_capacity(spec(generation={"num_gpus": 1}), ray_local, logged.append, [])
    assert logged == []


def test_a_cpu_campaign_fits_a_live_node_and_asks_for_nothing(ray_local):
    assert ensure_capacity(spec(), ray_local, print, []) is False


def test_waiting_for_a_node_says_so_then_gives_up_naming_the_field(ray_local):
    """Real Ray without an autoscaler to answer: the request is made, the wait is visible, and
    after the limit a one-line error names the field and what to check."""
    logged: list[str] = []
    types = [NodeType("gpu_1x", {"CPU": 8.0, "GPU": 1.0}, 2)]
    with pytest.raises(SpecError) as failed:
        ensure_capacity(
            spec(finetune_resources={"num_gpus": 1}),
            ray_local,
            logged.append,
            types,
            wait_limit_s=0.6,
            poll_s=0.1,
        )
    assert logged and logged[0].startswith(
        "capacity: waiting for the autoscaler to start a node for finetune_resources"
    )
    assert "node type gpu_1x" in logged[0]
    message = str(failed.value)
    assert "finetune_resources (1 actor(s) of CPU 1, GPU 1) on gpu_1x" in message
    assert "ray status" in message and "\n" not in message


def test_the_shipped_cluster_config_lets_gpu_campaigns_wait_for_its_workers():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "cluster.yaml").read_text())
    types = node_types_from_config(config)
    assert {t.name for t in types} == {"gpu_1x", "gpu_8x"}  # the head is not a node to add
    head = config["available_node_types"]["head"]["resources"]
    one_gpu = Demand("generation", {"CPU": 1.0, "GPU": 1.0}, 8)
    assert assess([one_gpu], [head], types).after_scaling == [(one_gpu, ["gpu_1x", "gpu_8x"])]
    with pytest.raises(SpecError, match=r"^finetune_resources: each actor needs .*GPU 16"):
        assess([Demand("finetune_resources", {"GPU": 16.0}, 1)], [head], types)
