"""Judges: the refusal-keyword judge and the 1-5 rubric judge behind a rate-limited Ray pool."""

from ftsafe_ray.judge.hexphi import RUBRIC_VERSION, build_rubric_messages, parse_rubric_output
from ftsafe_ray.judge.keyword import (
    BUILTIN_KEYWORD_SETS,
    EXTENDED,
    KEYWORD_JUDGE_VERSION,
    STUDY,
    STUDY_PHRASES,
    KeywordSet,
    KeywordVerdict,
    keyword_verdict,
)
from ftsafe_ray.judge.limiter import RateBudget, RateLimiter, estimate_request_tokens
from ftsafe_ray.judge.pool import RubricJudgeActor, make_rubric_judge_actor
from ftsafe_ray.judge.rubric_client import JudgeRequest, JudgeResult, RubricJudgeClient
from ftsafe_ray.judge.verdict import ParsedVerdict

__all__ = [
    "BUILTIN_KEYWORD_SETS",
    "EXTENDED",
    "KEYWORD_JUDGE_VERSION",
    "RUBRIC_VERSION",
    "STUDY",
    "STUDY_PHRASES",
    "JudgeRequest",
    "JudgeResult",
    "KeywordSet",
    "KeywordVerdict",
    "ParsedVerdict",
    "RateBudget",
    "RateLimiter",
    "RubricJudgeActor",
    "RubricJudgeClient",
    "build_rubric_messages",
    "estimate_request_tokens",
    "keyword_verdict",
    "make_rubric_judge_actor",
    "parse_rubric_output",
]
