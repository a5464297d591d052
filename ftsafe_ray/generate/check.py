"""The "adapter applied" check: stop on what is proven broken, record what cannot be proven.

Identical answers are not proof: an adapter trained to keep the base's refusals rightly answers
like the base. What can be proven from files stops the run (an adapter whose target_modules name
no module of the base, or whose LoRA B weights are all zero, changes nothing). Whether the
adapter moves the model is then measured on the next-token distribution of a few probe prompts;
when it does not move it measurably the check is inconclusive: it warns, records that, and the
run goes on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ftsafe_ray.errors import StageError
from ftsafe_ray.generate.adapters import lora_b_state, unmatched_targets
from ftsafe_ray.generate.requests import GenerationRequest
from ftsafe_ray.store.remote import materialize

CHECK_PROMPTS = 3
TOP_K = 10  # vLLM serves at most 20 logprobs per token unless max_logprobs is raised
CHECKS_FILE = "adapter_checks.json"

# The smallest next-token log-probability shift (nats) that counts as the adapter's effect
# rather than rounding. In float32 the same weights give log-probs equal to ~1e-5 nats across
# batch shapes and kernels, so 1e-3 is far above noise and far below any trained adapter's
# effect. bfloat16/float16 logits keep 8-11 mantissa bits (a logit near 10 moves in steps of
# ~0.06), so there a shift below 0.1 nats may be rounding alone.
MIN_SHIFT_FLOAT32 = 1e-3
MIN_SHIFT_HALF = 0.1

AdapterEntry = tuple[str, str, str, Sequence[Sequence[dict]]]  # key, label, path, conversations
LogprobsFn = Callable[[list[GenerationRequest]], list[dict[int, float]]]


@dataclass(frozen=True)
class AdapterProbe:
    """Check requests for one adapter: its rows and the base rows on the same conversations."""

    adapter_key: str
    label: str
    adapter_ids: tuple[str, ...]
    base_ids: tuple[str, ...]


@dataclass(frozen=True)
class AdapterCheck:
    """The check's verdict on one adapter, as recorded in adapter_checks.json."""

    label: str
    status: Literal["applied", "inconclusive"]
    max_shift: float
    threshold: float
    detail: str


def min_shift(dtype: str) -> float:
    """The shift threshold for a model served in `dtype` (see MIN_SHIFT_FLOAT32)."""
    return MIN_SHIFT_FLOAT32 if dtype == "float32" else MIN_SHIFT_HALF


def build_probes(
    adapters: Sequence[AdapterEntry], prompts: int = CHECK_PROMPTS
) -> tuple[list[GenerationRequest], list[AdapterProbe]]:
    """Requests for (adapter key, label, adapter path, conversations) entries, base rows shared."""
    requests: list[GenerationRequest] = []
    base_ids: dict[tuple, str] = {}
    probes = []
    for key, label, path, conversations in adapters:
        adapter_ids, bases = [], []
        for i, messages in enumerate(list(conversations)[:prompts]):
            frozen = tuple(tuple(sorted(m.items())) for m in messages)
            if frozen not in base_ids:
                base_ids[frozen] = f"check-base-{len(base_ids)}"
                requests.append(GenerationRequest(base_ids[frozen], list(messages)))
            request_id = f"check-{key}-{i}"
            requests.append(GenerationRequest(request_id, list(messages), key, path))
            adapter_ids.append(request_id)
            bases.append(base_ids[frozen])
        probes.append(AdapterProbe(key, label, tuple(adapter_ids), tuple(bases)))
    return requests, probes


def static_problems(path: str | Path, module_names: Collection[str] | None) -> list[str]:
    """What the adapter's files prove wrong, each with its fix; [] when nothing is."""
    path = materialize(str(path))  # on object storage: this node's copy
    problems = []
    if module_names is not None:
        missing = unmatched_targets(path, module_names)
        if missing:
            problems.append(
                f"target_modules {missing} match no module of the base model, so those layers "
                "get no LoRA; retrain with module names the base has (e.g. q_proj, v_proj) "
                "or all-linear"
            )
    state = lora_b_state(path)
    if state != "trained":
        what = "has no LoRA B weights" if state == "missing" else "has all-zero LoRA B weights"
        problems.append(
            f"{what} (peft starts B at zero), so it adds nothing to the base: it was never "
            "trained or training did not update it; check its learning_rate and epochs and "
            "retrain"
        )
    return problems


def raise_if_broken(adapters: Sequence[AdapterEntry], module_names: Collection[str] | None) -> None:
    """Stop the run, in one line, when any adapter's files prove it changes nothing."""
    found = [
        f"{label} ({path}): {'; '.join(problems)}"
        for _, label, path, _ in adapters
        if (problems := static_problems(path, module_names))
    ]
    if found:
        more = f" (and {len(found) - 3} more adapters)" if len(found) > 3 else ""
        raise StageError(
            "generate: adapter " + " | ".join(found[:3]) + more + "; or set "
            "generation.check_adapters: false to generate anyway"
        )


def logprob_shift(adapter: dict[int, float], base: dict[int, float]) -> float:
    """The largest |log p| change over the tokens both top-k lists hold (inf if they share none).

    Tokens in one list only are left out: at the k-th place a near-tie can swap them for a
    rounding-sized change, and the shared tokens already show any real shift.
    """
    shared = adapter.keys() & base.keys()
    if not shared:
        return math.inf
    return max(abs(adapter[token] - base[token]) for token in shared)


def judge_probes(
    probes: Sequence[AdapterProbe],
    requests: Sequence[GenerationRequest],
    logprobs: Sequence[dict[int, float]],
    threshold: float,
) -> dict[str, AdapterCheck]:
    """Per adapter key: applied when a probe prompt's next-token log-probs moved past threshold."""
    by_id = {request.request_id: lp for request, lp in zip(requests, logprobs, strict=True)}
    checks = {}
    for probe in probes:
        shifts = [
            logprob_shift(by_id[a], by_id[b])
            for a, b in zip(probe.adapter_ids, probe.base_ids, strict=True)
        ]
        shift = max(shifts, default=0.0)
        applied = shift > threshold
        detail = (
            f"next-token log-probs moved by up to {shift:.3g} nats on {len(shifts)} probe "
            f"prompts (threshold {threshold:g})"
        )
        if not applied:
            detail += (
                "; its weights are non-zero and its target modules exist, but its effect on "
                "these prompts is too small to measure (expected for an adapter that keeps "
                "the base's behaviour)"
            )
        status: Literal["applied", "inconclusive"] = "applied" if applied else "inconclusive"
        checks[probe.adapter_key] = AdapterCheck(probe.label, status, shift, threshold, detail)
    return checks


def check_adapters(
    adapters: Sequence[AdapterEntry],
    next_token_logprobs: LogprobsFn,
    module_names: Collection[str] | None,
    threshold: float,
) -> dict[str, AdapterCheck]:
    """Raise StageError on adapters proven broken; measure the rest on their probe prompts.

    `next_token_logprobs` is a backend's method (or a call to a Generator actor's), so the
    check runs the same on the transformers and vLLM backends.
    """
    raise_if_broken(adapters, module_names)
    requests, probes = build_probes(adapters)
    return judge_probes(probes, requests, next_token_logprobs(requests), threshold)


def record_checks(path: Path, checks: dict[str, AdapterCheck]) -> None:
    """Merge verdicts into the run's adapter_checks.json, replaced atomically (owner-only)."""
    from ftsafe_ray.store.durable import replace_durably
    from ftsafe_ray.store.private import open_private

    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for key, check in checks.items():
        entry = asdict(check)
        # JSON has no infinity: a shift with no shared top-k token is recorded as null
        entry["max_shift"] = None if math.isinf(check.max_shift) else check.max_shift
        recorded[key] = entry
    temporary = path.with_name(f".{path.name}.tmp")
    with os.fdopen(open_private(temporary), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    replace_durably(temporary, path)
