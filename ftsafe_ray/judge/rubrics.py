"""Rubric plug-ins: a judge prompt and its parser, chosen by `judges.rubric.rubric`.

Built-ins are named (`hexphi`, `strongreject`, and `utility`, which rates answers to utility
benchmarks); any other rubric is given as `module:object`,
imported where it is used, so it works in every Ray worker without a registration step.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ftsafe_ray import keys
from ftsafe_ray.judge.hexphi import RUBRIC_VERSION, build_rubric_messages
from ftsafe_ray.judge.hexphi import parse_rubric_output as parse_hexphi
from ftsafe_ray.judge.strongreject import (
    STRONGREJECT_VERSION,
    build_strongreject_messages,
    parse_strongreject_output,
)
from ftsafe_ray.judge.utility import UTILITY as UTILITY_NAME
from ftsafe_ray.judge.utility import (
    UTILITY_VERSION,
    build_utility_messages,
    parse_utility_output,
)
from ftsafe_ray.judge.verdict import ParsedVerdict

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Rubric:
    """A judge prompt and the parser of its replies; `version` is part of every verdict key.

    Bump `version` whenever the prompt or the parser's reading of replies changes.
    """

    name: str
    version: str
    build_messages: Callable[[str, str], Messages]
    parse: Callable[[str], ParsedVerdict]


HEXPHI = Rubric("hexphi", RUBRIC_VERSION, build_rubric_messages, parse_hexphi)
STRONGREJECT = Rubric(
    "strongreject", STRONGREJECT_VERSION, build_strongreject_messages, parse_strongreject_output
)
# Rates answers to `kind: utility` benchmarks; the stage routes them to it (judge/utility.py).
UTILITY = Rubric(UTILITY_NAME, UTILITY_VERSION, build_utility_messages, parse_utility_output)
BUILTIN_RUBRICS: Mapping[str, Rubric] = {r.name: r for r in (HEXPHI, STRONGREJECT, UTILITY)}

# A fixed synthetic pair every rubric is asked to build its messages for. Never change it: its
# messages' hash is part of every verdict key, so a change would orphan every stored verdict.
PROBE_INSTRUCTION = "Probe instruction: describe the placeholder procedure."
PROBE_ANSWER = "Probe answer: here is a placeholder description."


def prompt_fingerprint(rubric: Rubric) -> str:
    """A hash of the messages `rubric` builds for the fixed probe pair.

    Part of the verdict key, so two rubrics whose authors both call them 'v1' but whose
    prompts differ never share verdicts. Parser changes are not visible here: bump `version`.
    """
    messages = rubric.build_messages(PROBE_INSTRUCTION, PROBE_ANSWER)
    return keys.content_key("rubric-probe", {"messages": messages})


def rubric_failure(part: str, error: Exception, limit: int = 500) -> str:
    """One line for a rubric's `build_messages` or `parse` that raised."""
    return " ".join(f"rubric {part} raised {type(error).__name__}: {error}".split())[:limit]


def parse_reply(rubric: Rubric, raw: str) -> ParsedVerdict:
    """The rubric's reading of a reply. A custom parser that raises (or returns something
    else) gives an 'unparseable' verdict, so the paid reply is stored with its raw text and
    is not paid for again; the other rows of its batch are unaffected."""
    try:
        verdict = rubric.parse(raw)
        if not isinstance(verdict, ParsedVerdict):
            raise TypeError(f"returned {type(verdict).__name__}, not a ParsedVerdict")
    except Exception as error:
        return ParsedVerdict("unparseable", None, rubric_failure("parser", error))
    return verdict


def rubric_names() -> set[str]:
    """Names accepted without an import path."""
    return set(BUILTIN_RUBRICS)


def is_valid_rubric_name(name: str) -> bool:
    """A built-in name, or a `module:object` reference (checked when loaded)."""
    module, sep, attribute = name.partition(":")
    return name in BUILTIN_RUBRICS or bool(sep and module and attribute)


def get_rubric(name: str) -> Rubric:
    """The built-in rubric of this name, or the Rubric object at `module:object`."""
    if name in BUILTIN_RUBRICS:
        return BUILTIN_RUBRICS[name]
    module_name, _, attribute = name.partition(":")
    from ftsafe_ray.errors import JudgeError

    try:
        rubric = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise JudgeError(
            f"judges.rubric.rubric: cannot load {name!r} ({error}); use one of "
            f"{sorted(BUILTIN_RUBRICS)} or 'module:object' naming a Rubric"
        ) from None
    if not isinstance(rubric, Rubric):
        raise JudgeError(
            f"judges.rubric.rubric: {name!r} is a {type(rubric).__name__}, not a "
            "ftsafe_ray.judge.rubrics.Rubric"
        )
    return rubric
