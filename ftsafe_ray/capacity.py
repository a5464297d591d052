"""Can the Ray cluster hold the campaign's actors, now or once its autoscaler adds nodes?

An actor runs on one node, so what matters is the largest node, not the cluster's totals: four
1-GPU nodes hold no 4-GPU actor. A node that is not up yet counts when the autoscaler can start
one of its type: such a campaign asks the autoscaler for the nodes (`request_resources`) and says
that it is waiting while they start, instead of failing before the autoscaler could act. An actor
that no live node and no node type can ever hold fails at once, naming the field.

Node types come from the autoscaler's cluster config in the GCS when the cluster reports one,
else from the config `ray up` leaves on the head node (`~/ray_bootstrap_config.yaml`, where the
driver of `ray job submit` runs; `FTSAFE_AUTOSCALER_CONFIG` names another file).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftsafe_ray.errors import SpecError
from ftsafe_ray.spec import CampaignSpec

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
CONFIG_ENV = "FTSAFE_AUTOSCALER_CONFIG"
WAIT_LIMIT_S = 20 * 60.0  # cloud GPU nodes take minutes to boot; quotas can stall them for good
POLL_S = 5.0
REPORT_EVERY_S = 30.0


@dataclass(frozen=True)
class Demand:
    """`count` actors, each needing `resources` on one node, asked for by spec field `field`."""

    field: str
    resources: Mapping[str, float]
    count: int

    def describe(self) -> str:
        wanted = ", ".join(f"{name} {amount:g}" for name, amount in self.resources.items())
        return f"{self.field} ({self.count} actor(s) of {wanted or 'nothing'})"


@dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler can start: its resources and how many it may run."""

    name: str
    resources: Mapping[str, float]
    max_workers: int


@dataclass
class Capacity:
    """What the cluster can do for each demand: held now, after scaling, or never."""

    now: list[Demand] = field(default_factory=list)
    after_scaling: list[tuple[Demand, list[str]]] = field(default_factory=list)


def actor_demands(spec: CampaignSpec) -> list[Demand]:
    """The per-actor resources the campaign's fine-tune and generator actors ask Ray for."""
    demands = []
    for name, settings in (
        ("finetune_resources", spec.finetune_resources),
        ("generation", spec.generation),
    ):
        wanted = {"CPU": float(settings.num_cpus), "GPU": float(settings.num_gpus)}
        resources = {key: amount for key, amount in wanted.items() if amount > 0}
        demands.append(Demand(name, resources, settings.num_actors))
    return demands


def fits(resources: Mapping[str, float], node: Mapping[str, float]) -> bool:
    """Whether one node with `node` resources in total can hold an actor needing `resources`."""
    return all(node.get(name, 0.0) + 1e-9 >= amount for name, amount in resources.items())


def assess(
    demands: Sequence[Demand], nodes: Sequence[Mapping[str, float]], types: Sequence[NodeType]
) -> Capacity:
    """Sort demands into held now and held after scaling; raise SpecError for any that no live
    node and no node type can hold, naming its field, the largest node and the node types."""
    capacity = Capacity()
    for demand in demands:
        if any(fits(demand.resources, node) for node in nodes):
            capacity.now.append(demand)
            continue
        starters = [
            t.name for t in types if t.max_workers > 0 and fits(demand.resources, t.resources)
        ]
        if starters:
            capacity.after_scaling.append((demand, starters))
            continue
        raise SpecError(_never_fits(demand, nodes, types))
    return capacity


def _never_fits(
    demand: Demand, nodes: Sequence[Mapping[str, float]], types: Sequence[NodeType]
) -> str:
    field_name = demand.field
    gpu = demand.resources.get("GPU", 0.0)
    cpu = demand.resources.get("CPU", 0.0)
    biggest = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    known = (
        "; the autoscaler's node types: "
        + ", ".join(f"{t.name} ({_brief(t.resources)})" for t in types)
        if types
        else "; no autoscaler node types are known"
    )
    return (
        f"{field_name}: each actor needs {_brief(demand.resources)} on one node, but the largest "
        f"node has GPU {biggest:g} and CPU {cpus:g}{known}; lower {field_name}.num_gpus/num_cpus "
        f"(now {gpu:g}/{cpu:g}) or add a node type that holds it"
    )


def _brief(resources: Mapping[str, float]) -> str:
    shown = {name: amount for name, amount in resources.items() if name in ("CPU", "GPU")}
    return ", ".join(f"{name} {amount:g}" for name, amount in sorted(shown.items())) or "nothing"


def live_nodes(ray: Any) -> list[dict[str, float]]:
    """Each alive node's total resources."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def autoscaler_node_types(config_path: str | None = None) -> list[NodeType]:
    """The node types the autoscaler can start (the head's type left out), or [] if there is no
    autoscaler this driver can see."""
    from_gcs = _node_types_from_gcs()
    if from_gcs:
        return from_gcs
    path = Path(config_path or os.environ.get(CONFIG_ENV) or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return []
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return node_types_from_config(config if isinstance(config, dict) else {})


def node_types_from_config(config: Mapping[str, Any]) -> list[NodeType]:
    """Worker node types of a Ray cluster-launcher config (`available_node_types`)."""
    head = config.get("head_node_type")
    limit = int(config.get("max_workers", 0) or 0)
    types = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head or not isinstance(node_type, Mapping):
            continue
        resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items()}
        most = int(node_type.get("max_workers", limit) or 0)
        types.append(NodeType(str(name), resources, min(most, limit) if limit else most))
    return types


def _node_types_from_gcs() -> list[NodeType]:
    """Node groups of the cluster config an autoscaler reported to the GCS (KubeRay, v2)."""
    try:
        from ray._private.state import state  # Ray Data reads the same; no public API yet

        config = state.get_cluster_config()
    except Exception:  # an older Ray or no cluster config: fall back to the file
        return []
    if config is None:
        return []
    return [
        NodeType(
            group.name,
            {key: float(value) for key, value in group.resources.items()},
            int(1_000_000 if group.max_count == -1 else group.max_count),
        )
        for group in config.node_group_configs
    ]


def ensure_capacity(
    spec: CampaignSpec,
    ray: Any,
    log: Callable[[str], None],
    node_types: Sequence[NodeType] | None = None,
    wait_limit_s: float = WAIT_LIMIT_S,
    poll_s: float = POLL_S,
) -> bool:
    """Fail at once for an actor no node can ever hold; for one only a node the autoscaler can
    start can hold, ask for those nodes and wait (saying so) until one is up. Returns whether
    nodes were requested (the caller clears the request when the run ends)."""
    types = autoscaler_node_types() if node_types is None else list(node_types)
    demands = actor_demands(spec)
    capacity = assess(demands, live_nodes(ray), types)
    if not capacity.after_scaling:
        return False
    from ray.autoscaler.sdk import request_resources

    bundles = [
        {name: amount for name, amount in demand.resources.items()}
        for demand, _ in capacity.after_scaling
        for _ in range(demand.count)
    ]
    request_resources(bundles=bundles)
    started = time.monotonic()
    reported = -REPORT_EVERY_S
    while True:
        waiting = [
            (demand, starters)
            for demand, starters in capacity.after_scaling
            if not any(fits(demand.resources, node) for node in live_nodes(ray))
        ]
        if not waiting:
            log(f"capacity: nodes are up after {time.monotonic() - started:.0f}s")
            return True
        waited = time.monotonic() - started
        if waited >= wait_limit_s:
            request_resources(bundles=[])
            names = "; ".join(
                f"{demand.describe()} on {' or '.join(starters)}" for demand, starters in waiting
            )
            raise SpecError(
                f"no node that holds {names} started within {wait_limit_s:.0f}s; check the "
                "autoscaler (`ray status`, its logs, your cloud quota), then rerun to resume"
            )
        if waited - reported >= REPORT_EVERY_S:
            reported = waited
            for demand, starters in waiting:
                log(
                    f"capacity: waiting for the autoscaler to start a node for "
                    f"{demand.describe()} (node type {' or '.join(starters)}); {waited:.0f}s so far"
                )
        time.sleep(poll_s)


def release_request() -> None:
    """Withdraw the node request, so the autoscaler may scale down once the run's actors end."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])
