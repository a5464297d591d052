"""Verdict identity: what determines a verdict, hashed into its key.

A module of its own so the report can find a run's verdicts without importing a judge stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ftsafe_ray import keys

if TYPE_CHECKING:
    from ftsafe_ray.judge.keyword import KeywordSet
    from ftsafe_ray.spec import RubricJudgeSpec

KEYWORD = "keyword"
RUBRIC = "rubric"


def keyword_identity(keyword_set: KeywordSet) -> dict[str, Any]:
    """What determines a keyword verdict: the set's name, a hash of its phrases and rule, and
    the version of the degenerate-output flag stored beside it."""
    return dict(keyword_set.identity())


def keyword_set_identities(keyword_sets: Iterable[KeywordSet]) -> dict[str, dict[str, Any]]:
    """Name → verdict identity of each phrase set, as a run directory records them."""
    return {s.name: keyword_identity(s) for s in keyword_sets}


def rubric_identity(spec: RubricJudgeSpec) -> dict[str, Any]:
    """What determines a rubric verdict: the rubric (its `spec.rubric` name or `module:object`
    path, version, and a hash of the messages it builds for a fixed probe), the judge model
    and the endpoint's host when `base_url` is set. The endpoint's limits and the mode do not.
    """
    from urllib.parse import urlsplit

    from ftsafe_ray.judge.rubrics import get_rubric, prompt_fingerprint

    rubric = get_rubric(spec.rubric)
    identity: dict[str, Any] = {
        "judge": RUBRIC,
        "model": spec.model,
        "rubric": spec.rubric,
        "version": rubric.version,
        "prompt": prompt_fingerprint(rubric),
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }
    if spec.base_url is not None:
        # The same model name at another server can be another model. Host and port only:
        # the path and any credentials in the URL say nothing about which model answers.
        url = spec.base_url if "//" in spec.base_url else f"//{spec.base_url}"
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port: int | str | None
        try:
            port = parts.port
        except ValueError:  # not a number: keep it as written, it still names the endpoint
            port = parts.netloc.rpartition(":")[2].lower()
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        identity["endpoint"] = host if port in (None, default) else f"{host}:{port}"
    return identity


def verdict_key_for(identity: Mapping[str, Any], generation: Mapping[str, Any]) -> str:
    """The key of a judge's verdict on one stored answer."""
    return keys.verdict_key(
        judge=dict(identity), instruction=generation["prompt"], answer=generation["response"]
    )
