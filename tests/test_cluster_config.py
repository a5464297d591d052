"""The shipped cluster configs: cluster.yaml passes Ray's own cluster-config validator and is laid
out as README says; jobs/rayjob.yaml has the fields KubeRay requires and keeps the key secret."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.cluster


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def test_cluster_yaml_passes_rays_validator_and_is_laid_out_as_documented():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    # What `ray up` does before it calls the cloud: defaults filled in, then validated.
    validate_config(prepare_config(copy.deepcopy(config)))

    # The current Ray image at this Ray's version, not the deprecated ray-ml images.
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "ray-ml" not in yaml.safe_dump(config)
    assert f'"ray[default]=={ray.__version__}"' in " ".join(config["setup_commands"])
    assert "ftsafe_ray[vllm]" in " ".join(config["setup_commands"])

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no fine-tune or generator actor on the head
    assert "GPU" not in head["resources"]
    gpus = sorted(t["resources"]["GPU"] for name, t in types.items() if t is not head)
    assert gpus == [1, 8]
    for node_type in types.values():
        if node_type is not head:
            assert node_type["min_workers"] == 0 < node_type["max_workers"]  # autoscaled

    # The dashboard listens on the head's localhost (`ray dashboard` forwards it); relative run
    # directories go to the shared mount; no s3:// run directory is claimed to work.
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "FTSAFE_RUNS_ROOT=/shared/" in head_start
    assert "-v /shared:/shared" in config["docker"]["run_options"]
    assert "s3://" not in yaml.safe_dump(config)
    # No key in the config: at most a file mount of a key file, commented out by default.
    assert not re.search(r"sk-[A-Za-z0-9]", (REPO / "cluster.yaml").read_text())


def test_cluster_yaml_errors_are_caught_by_the_validator():
    """The validator really checks: a misspelt field is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster.yaml")
    config["available_node_types"]["gpu_1x"]["max_worker"] = 8  # typo
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def test_rayjob_has_the_fields_kuberay_requires_and_no_secret_value():
    job = load("jobs/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/run_campaign.py campaigns/")
    assert (REPO / "jobs" / "run_campaign.py").is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    # KubeRay's RayCluster: headGroupSpec {rayStartParams, template}; each worker group
    # {groupName, minReplicas, maxReplicas, rayStartParams, template}; each container a name
    # and an image.
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = cluster["workerGroupSpecs"]
    for group in groups:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(
            group
        ), group
        assert group["minReplicas"] == 0 < group["maxReplicas"]
    templates = [head["template"]] + [g["template"] for g in groups]
    for template in templates:
        for container in containers(template):
            assert container["name"] and container["image"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/shared" in mounts  # every pod sees the run directory
    assert len({g["groupName"] for g in groups}) == len(groups)
    gpus = sorted(
        containers(g["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] for g in groups
    )
    assert gpus == [1, 8]

    # The runtime env (shown by `ray job list`) carries no variables; the key comes from a
    # Kubernetes Secret, set on the head container where the driver runs.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "env_vars" not in runtime_env
    env = {e["name"]: e for e in containers(head["template"])[0]["env"]}
    assert env["FTSAFE_RUNS_ROOT"]["value"].startswith("/shared/")
    assert "value" not in env["OPENAI_API_KEY"]
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]
