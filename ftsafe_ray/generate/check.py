"""The "adapter applied" check: an adapter that answers exactly like its base was not applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftsafe_ray.errors import StageError
from ftsafe_ray.generate.requests import GenerationRequest, GenerationResult
from ftsafe_ray.spec import SamplingSpec

CHECK_PROMPTS = 3
CHECK_TOKENS = 16


@dataclass(frozen=True)
class AdapterProbe:
    """Check requests for one adapter: its rows and the base rows on the same conversations."""

    adapter_key: str
    label: str
    adapter_ids: tuple[str, ...]
    base_ids: tuple[str, ...]


def check_sampling(sampling: SamplingSpec) -> SamplingSpec:
    """Greedy and short: differences show in the first tokens, and greedy is deterministic."""
    return SamplingSpec(max_new_tokens=min(CHECK_TOKENS, sampling.max_new_tokens), temperature=0.0)


def build_probes(
    adapters: Sequence[tuple[str, str, str, Sequence[Sequence[dict]]]],
    prompts: int = CHECK_PROMPTS,
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


def unapplied(probes: Sequence[AdapterProbe], results: Sequence[GenerationResult]) -> list[str]:
    """Labels of adapters whose every check answer equals the base model's answer."""
    text = {result.request_id: result.text for result in results}
    return [
        probe.label
        for probe in probes
        if all(text[a] == text[b] for a, b in zip(probe.adapter_ids, probe.base_ids, strict=True))
    ]


def raise_if_unapplied(labels: Sequence[str], prompts: int) -> None:
    """Stop the run, in one line, when any adapter had no effect."""
    if labels:
        shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        raise StageError(
            f"generate: adapter(s) {shown} answered {prompts} check prompts exactly like the base "
            "model, so the adapter was not applied or learned nothing; check its training and "
            "target_modules, or set generation.check_adapters: false to generate anyway"
        )
