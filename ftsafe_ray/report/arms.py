"""What the campaign says about arms beyond their labels: which arm a mitigation arm
mitigates, which arms form an epochs series, and the dose-response lines they give."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ftsafe_ray.report.html_charts import Series
from ftsafe_ray.report.metrics import GroupSummary

if TYPE_CHECKING:
    from ftsafe_ray.spec import CampaignSpec


@dataclass(frozen=True)
class ArmRelations:
    """What the spec says about arms beyond their labels: which arm a mitigation arm mitigates
    (same data and trigger, without the mixed-in sets), and each arm's epochs and family."""

    mitigates: dict[str, str] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    family: dict[str, str] = field(default_factory=dict)


def arm_relations(spec: CampaignSpec) -> ArmRelations:
    """Mitigation pairs and epoch families of a campaign's arms."""
    plain = [f for f in spec.finetunes if not f.mix]
    mitigates = {}
    for arm in spec.finetunes:
        if arm.mix:
            twin = next(
                (p for p in plain if p.dataset == arm.dataset and p.trigger == arm.trigger), None
            )
            if twin is not None:
                mitigates[arm.name] = twin.name
    # Arms alike in everything but their name, sizes and epochs form an epochs series.
    families: dict[str, list[str]] = {}
    for arm in spec.finetunes:
        recipe = arm.model_dump(mode="json", exclude={"name", "sizes"})
        recipe["train"].pop("epochs", None)
        families.setdefault(json.dumps(recipe, sort_keys=True), []).append(arm.name)
    family = {name: " / ".join(names) for names in families.values() for name in names}
    return ArmRelations(mitigates, {f.name: f.train.epochs for f in spec.finetunes}, family)


def with_mitigations_after(
    summaries: Sequence[GroupSummary], mitigates: Mapping[str, str]
) -> list[GroupSummary]:
    """The table's rows with each mitigation arm moved right after the arm it mitigates."""
    out = [s for s in summaries if s.arm not in mitigates]
    for s in summaries:
        target = mitigates.get(s.arm or "")
        if target is None:
            continue
        after = [i for i, t in enumerate(out) if t.arm == target or t.arm == s.arm]
        out.insert(after[-1] + 1 if after else len(out), s)
    return out


def dose_series(
    summaries: Sequence[GroupSummary], relations: ArmRelations
) -> dict[str, list[Series]]:
    """Lines for dose-response charts: an arm at several sizes (axis "examples"), and arms of
    one family that differ in epochs (axis "epochs")."""
    tuned = [s for s in summaries if not s.is_base and s.arm is not None]
    by_size: dict[tuple[Any, ...], list[GroupSummary]] = {}
    by_epochs: dict[tuple[Any, ...], list[GroupSummary]] = {}
    for s in tuned:
        by_size.setdefault((s.arm, s.dataset, s.condition), []).append(s)
        family = relations.family.get(s.arm or "")
        if family is not None and s.arm in relations.epochs:
            by_epochs.setdefault((family, s.size, s.condition), []).append(s)
    out: dict[str, list[Series]] = {"examples": [], "epochs": []}
    for (arm, _, condition), group in by_size.items():
        sized = sorted((s for s in group if s.size is not None), key=lambda s: s.size or 0)
        if len({s.size for s in sized}) > 1:
            label = f"{arm} @{condition}" if condition else str(arm)
            doses = tuple(float(s.size or 0) for s in sized)
            out["examples"].append(Series(label, doses, tuple(sized)))
    for (family, size, condition), group in by_epochs.items():
        ordered = sorted(group, key=lambda s: relations.epochs[s.arm or ""])
        if len({relations.epochs[s.arm or ""] for s in ordered}) > 1:
            label = f"{family}·{size}" + (f" @{condition}" if condition else "")
            doses = tuple(float(relations.epochs[s.arm or ""]) for s in ordered)
            out["epochs"].append(Series(label, doses, tuple(ordered)))
    return out
