"""Spec of the judges: keyword phrase sets, the rubric judge and its prices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ftsafe_ray.spec.common import NAME_PATTERN, Strict, absolute_key_file


class KeywordSetFile(Strict):
    """A user phrase set: a UTF-8 text file, one refusal phrase per line, kept verbatim."""

    name: str = Field(pattern=NAME_PATTERN, description="Set name; report column suffix.")
    path: str = Field(description="Phrase file, relative to the campaign file.")
    normalise_apostrophes: bool = Field(
        False, description="Read curly apostrophes as ASCII ones before matching."
    )


class KeywordJudgeSpec(Strict):
    """Refusal-phrase judge (keyword ASR), run once per phrase set."""

    enabled: bool = True
    sets: tuple[str | KeywordSetFile, ...] = Field(
        ("study",),
        min_length=1,
        description="'study' (the paper's 29 phrases and rule, verbatim), 'extended' (study + "
        "modern refusals, apostrophes normalised), or {name, path} of a phrase file.",
    )

    @field_validator("sets")
    @classmethod
    def _known_sets(
        cls, sets: tuple[str | KeywordSetFile, ...]
    ) -> tuple[str | KeywordSetFile, ...]:
        from ftsafe_ray.judge.keyword import BUILTIN_KEYWORD_SETS

        problems = []
        names = [s if isinstance(s, str) else s.name for s in sets]
        for entry in sets:
            if isinstance(entry, str) and entry not in BUILTIN_KEYWORD_SETS:
                problems.append(
                    f"unknown keyword set {entry!r}; allowed: {sorted(BUILTIN_KEYWORD_SETS)} "
                    "or {name: ..., path: phrases.txt}"
                )
            if isinstance(entry, KeywordSetFile) and entry.name in BUILTIN_KEYWORD_SETS:
                problems.append(
                    f"keyword set file {entry.path!r} is named {entry.name!r}, a built-in set's "
                    "name; give it another name"
                )
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            problems.append(f"keyword set names must be unique, {duplicated} repeat")
        if problems:
            raise ValueError("; ".join(problems))
        return sets

    def set_names(self) -> tuple[str, ...]:
        """The sets' names in spec order."""
        return tuple(s if isinstance(s, str) else s.name for s in self.sets)


class RubricJudgeSpec(Strict):
    """The rubric judge (1–5 HEx-PHI or StrongREJECT) behind any OpenAI-compatible endpoint."""

    enabled: bool | Literal["auto"] = Field(
        "auto",
        description="'auto' runs it when the API key variable is set, or api_key_file or "
        "base_url is given.",
    )
    model: str = Field("gpt-4", description="Judge model name at the endpoint.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL; None = OpenAI.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable with the key.")
    api_key_file: str | None = Field(
        None,
        description="Absolute path of a file holding the key, read on the driver's node instead "
        "of api_key_env (keeps the key out of a Ray job's runtime env).",
    )
    rubric: str = Field(
        "hexphi",
        description="Prompt + parser: 'hexphi' (1–5), 'strongreject', or 'module:object'.",
    )
    mode: Literal["online", "batch"] = Field(
        "online", description="'online': rate-limited actor pool; 'batch': OpenAI Batch API."
    )
    num_actors: int = Field(
        1, ge=1, le=256, description="Judge actors; all share one cluster-wide rate budget."
    )
    max_concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight per actor.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries per request before 'error'.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="Provider limit for this model, enforced across the cluster."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Provider limit (prompt + max_tokens), across the cluster."
    )
    max_tokens: int = Field(512, ge=16, description="Judge answer length limit.")
    budget_usd: float | None = Field(
        None, gt=0, description="Stop new judge calls once this campaign's judge spend reaches it."
    )
    batch_max_requests: int = Field(
        50_000, ge=1, le=50_000, description="Requests per Batch API job (batch mode)."
    )
    batch_poll_s: float = Field(30.0, gt=0, description="Seconds between batch status polls.")

    _absolute_key_file = field_validator("api_key_file")(absolute_key_file)

    @field_validator("rubric")
    @classmethod
    def _known_rubric(cls, name: str) -> str:
        from ftsafe_ray.judge.rubrics import is_valid_rubric_name, rubric_names

        if not is_valid_rubric_name(name):
            raise ValueError(
                f"unknown rubric {name!r}; allowed: {sorted(rubric_names())} or 'module:object'"
            )
        return name


class JudgePrice(Strict):
    """What a judge model costs, in US dollars per million tokens."""

    input_per_million: float = Field(ge=0, description="$ per 1M prompt tokens.")
    output_per_million: float = Field(ge=0, description="$ per 1M completion tokens.")
    batch_discount: float = Field(
        0.5, ge=0, le=1, description="Share of the price the Batch API charges (OpenAI: 0.5)."
    )
    training_per_million: float | None = Field(
        None,
        ge=0,
        description="$ per 1M trained tokens (tokens x epochs), for API fine-tuning; the "
        "entry's key is the base model's id (models[].path).",
    )


class JudgesSpec(Strict):
    keyword: KeywordJudgeSpec = KeywordJudgeSpec()
    rubric: RubricJudgeSpec = RubricJudgeSpec()
    cache_dir: str | None = Field(
        None,
        description="A judgments table shared by campaigns (relative to the campaign file); "
        "verdicts found there are reused, new ones added. Default: the run dir's judgments.",
    )
    prices: dict[str, JudgePrice] = Field(
        default_factory=dict, description="Judge model name → price, for `plan` and budget_usd."
    )

    @model_validator(mode="after")
    def _budget_needs_a_price(self) -> JudgesSpec:
        if self.rubric.budget_usd is not None and self.rubric.model not in self.prices:
            raise ValueError(
                f"rubric.budget_usd is set but judges.prices has no entry for "
                f"{self.rubric.model!r}; add judges.prices.{self.rubric.model}"
                " {input_per_million, output_per_million}"
            )
        return self
