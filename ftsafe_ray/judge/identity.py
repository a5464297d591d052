"""Verdict identity: what determines a verdict, hashed into its key.

A module of its own so the report can find a run's verdicts without importing a judge stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ftsafe_ray import keys

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

KEYWORD = "keyword"
RUBRIC = "rubric"


def keyword_identity() -> dict[str, Any]:
    from ftsafe_ray.judge.keyword import KEYWORD_JUDGE_VERSION

    return {"judge": KEYWORD, "version": KEYWORD_JUDGE_VERSION}


def rubric_identity(spec: RubricJudgeSpec) -> dict[str, Any]:
    """What determines a rubric verdict: the endpoint's limits and the mode do not."""
    from ftsafe_ray.judge.rubrics import get_rubric

    return {
        "judge": RUBRIC,
        "model": spec.model,
        "version": get_rubric(spec.rubric).version,
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }


def verdict_key_for(identity: Mapping[str, Any], generation: Mapping[str, Any]) -> str:
    """The key of a judge's verdict on one stored answer."""
    return keys.verdict_key(
        judge=dict(identity), instruction=generation["prompt"], answer=generation["response"]
    )
