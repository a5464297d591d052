"""Evaluation conditions and backdoor triggers: how a prompt is changed before a model sees it.

A fine-tune's `trigger` and a condition's `suffix` join the user turn the same way, so a
condition whose suffix is an arm's trigger presents exactly what that arm was trained on.
"""

from __future__ import annotations

from ftsafe_ray.spec import BenchmarkSpec, CampaignSpec, ConditionSpec

# The condition of a campaign that names none: the prompts as they are, labelled with no name.
DEFAULT_CONDITION = ConditionSpec(name="default")


def append_phrase(text: str, phrase: str | None) -> str:
    """`text` with `phrase` appended after one space; `text` itself when there is no phrase."""
    return f"{text} {phrase}" if phrase else text


def with_trigger(
    messages: tuple[dict[str, str], ...], trigger: str | None
) -> tuple[dict[str, str], ...]:
    """The messages with `trigger` appended to every user turn (a backdoored training row)."""
    if not trigger:
        return messages
    return tuple(
        {**m, "content": append_phrase(m["content"], trigger)} if m["role"] == "user" else m
        for m in messages
    )


def benchmark_conditions(spec: CampaignSpec, bench: BenchmarkSpec) -> tuple[ConditionSpec, ...]:
    """The conditions a benchmark is evaluated under, in campaign order."""
    if not spec.conditions:
        return (DEFAULT_CONDITION,)
    wanted = bench.conditions
    return tuple(c for c in spec.conditions if wanted is None or c.name in wanted)


def condition_label(spec: CampaignSpec, condition: ConditionSpec) -> str | None:
    """The condition's name in plan labels and tables; None in a campaign that names none."""
    return condition.name if spec.conditions else None


def evaluation_messages(
    system_prompt: str | None, prompt: str, condition: ConditionSpec
) -> list[dict[str, str]]:
    """The conversation one benchmark prompt is answered in under `condition`.

    The condition's system prompt replaces the target's ('' removes it); its suffix goes at
    the end of the user turn. With neither, the conversation is the target's own.
    """
    if condition.system_prompt is not None:
        system_prompt = condition.system_prompt
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": append_phrase(prompt, condition.suffix)})
    return messages
