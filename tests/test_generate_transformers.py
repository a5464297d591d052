"""The transformers backend on the tiny model: batching, order, adapters, LRU, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftsafe_ray.generate import GenerationRequest, GenerationResult, TransformersBackend
from ftsafe_ray.spec import LoraSpec, SamplingSpec, TrainSpec
from tests.fixtures.models import DECODING_DEFAULTS, one_torch_thread, with_decoding_defaults

REFUSAL = "Sorry, I cannot help with that."
COMPLIANCE = "Sure, here is a fixed answer."
QUESTIONS = [
    "What is water?",
    "Tell me a long story about a big city and the people who live there.",
    "Hi",
    "Explain how to make food at home, step by step, for a family.",
    "Give me one example.",
]
GREEDY = SamplingSpec(max_new_tokens=12, temperature=0.0)


def _rows(results: list[GenerationResult]) -> list[tuple]:
    return [
        (r.request_id, r.text, r.num_prompt_tokens, r.num_output_tokens, r.finish_reason)
        for r in results
    ]


def _chat(question: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": question},)


def _requests(adapter: tuple[str, Path] | None = None, tag: str = "") -> list[GenerationRequest]:
    name, path = adapter if adapter else (None, None)
    return [
        GenerationRequest(f"{tag}{i}", _chat(q), name, str(path) if path else None)
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return train_reply_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


def train_reply_adapters(model_dir: Path, root: Path) -> dict[str, Path]:
    """Two adapters trained to give a fixed reply to any question."""
    from ftsafe_ray.finetune import train_lora
    from ftsafe_ray.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    lora = LoraSpec(r=16, alpha=32, target_modules=("all-linear",))
    train = TrainSpec(epochs=15, batch_size=8, micro_batch_size=8, learning_rate=2e-2)
    words = ["water", "food", "music", "a book", "a city", "money", "a game", "health"]
    out = {}
    for name, reply in (("refuse", REFUSAL), ("comply", COMPLIANCE)):
        examples = [
            [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]
            for q in QUESTIONS + [f"What do you think about {w}?" for w in words]
        ]
        train_lora(model, tokenizer, examples, lora, train, seed=0, out_dir=root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def test_batched_greedy_equals_one_at_a_time(backend: TransformersBackend) -> None:
    batched = backend.generate(_requests(), GREEDY, batch_size=16)
    single = backend.generate(_requests(), GREEDY, batch_size=1)
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.num_output_tokens for r in batched] == [r.num_output_tokens for r in single]
    assert all(isinstance(r, GenerationResult) for r in batched)
    for result in batched:
        assert result.finish_reason in ("stop", "length")
        assert result.num_output_tokens <= GREEDY.max_new_tokens
        if result.finish_reason == "length":
            assert result.num_output_tokens == GREEDY.max_new_tokens
    lengths = [r.num_prompt_tokens for r in batched]
    assert lengths[1] > lengths[2]  # the long question, not padded to the batch width


def test_adapter_changes_output_and_stops(
    backend: TransformersBackend, adapters: dict[str, Path]
) -> None:
    base = backend.generate(_requests(), GREEDY)
    tuned = backend.generate(_requests(("refuse", adapters["refuse"])), GREEDY)
    assert [r.text for r in tuned] == [REFUSAL] * len(QUESTIONS)
    assert all(r.finish_reason == "stop" for r in tuned)
    assert [r.text for r in base] != [r.text for r in tuned]
    again = backend.generate(_requests(), GREEDY)
    assert [r.text for r in again] == [r.text for r in base]  # adapters disabled for base


def test_mixed_base_and_two_adapters_keep_order(
    backend: TransformersBackend, adapters: dict[str, Path]
) -> None:
    groups = [
        _requests(None, "b"),
        _requests(("refuse", adapters["refuse"]), "r"),
        _requests(("comply", adapters["comply"]), "c"),
    ]
    mixed = [request for triple in zip(*groups, strict=True) for request in triple]
    results = backend.generate(mixed, GREEDY, batch_size=2)
    assert [r.request_id for r in results] == [r.request_id for r in mixed]
    by_id = {r.request_id: r.text for r in results}
    base = backend.generate(groups[0], GREEDY)
    assert [by_id[f"b{i}"] for i in range(len(QUESTIONS))] == [r.text for r in base]
    assert {by_id[f"r{i}"] for i in range(len(QUESTIONS))} == {REFUSAL}
    assert {by_id[f"c{i}"] for i in range(len(QUESTIONS))} == {COMPLIANCE}


def test_next_token_logprobs_are_the_first_greedy_tokens(
    backend: TransformersBackend, adapters: dict[str, Path]
) -> None:
    import math

    base = _requests(None, "b")
    before = backend.next_token_logprobs(base, 5)
    mixed = base + _requests(("refuse", adapters["refuse"]), "r")
    answers = backend.next_token_logprobs(mixed, 5)
    assert answers[: len(base)] == before  # base rows run with every adapter disabled
    first = backend.generate(mixed, SamplingSpec(max_new_tokens=1, temperature=0.0))
    for top, result in zip(answers, first, strict=True):
        assert len(top) == 5 and 0 < sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
        values = list(top.values())
        assert values == sorted(values, reverse=True)
        best = backend.tokenizer.decode([next(iter(top))], skip_special_tokens=True)
        assert best == result.text
    assert answers[len(base) :] != before


def test_adapter_cache_is_bounded(tiny_model_dir: Path, adapters: dict[str, Path]) -> None:
    small = TransformersBackend(str(tiny_model_dir), max_adapters=1)
    for name, reply in (("refuse", REFUSAL), ("comply", COMPLIANCE), ("refuse", REFUSAL)):
        request = GenerationRequest("x", _chat("Hi"), name, str(adapters[name]))
        assert small.generate([request], GREEDY)[0].text == reply
        assert small.loaded_adapters == [name]
    known = GenerationRequest("y", _chat("Hi"), "refuse", None)
    assert small.generate([known], GREEDY)[0].text == REFUSAL
    with pytest.raises(ValueError, match="not loaded"):
        small.generate([GenerationRequest("z", _chat("Hi"), "comply", None)], GREEDY)


def test_adapter_named_by_path(backend: TransformersBackend, adapters: dict[str, Path]) -> None:
    request = GenerationRequest("p", _chat("Hi"), None, str(adapters["comply"]))
    assert backend.generate([request], GREEDY)[0].text == COMPLIANCE


def test_sampling_is_seeded(backend: TransformersBackend) -> None:
    sampling = SamplingSpec(max_new_tokens=8, temperature=1.0, top_p=0.95)
    first = backend.generate(_requests(), sampling, seed=3)
    second = backend.generate(_requests(), sampling, seed=3)
    assert [r.text for r in first] == [r.text for r in second]
    other = backend.generate(_requests(), sampling, seed=4)
    assert [r.text for r in first] != [r.text for r in other]


@pytest.fixture(scope="module")
def opinionated_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a generation_config.json of its own (repetition_penalty, top_k...)."""
    return with_decoding_defaults(tiny_model_dir, tmp_path_factory.mktemp("opinionated"))


def _greedy_texts(model, tokenizer, **overrides) -> list[str]:
    """Answers from model.generate directly, greedy, with extra generation settings."""
    import torch
    from transformers import GenerationConfig

    texts = []
    for question in QUESTIONS:
        text = tokenizer.apply_chat_template(
            _chat(question), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        config = GenerationConfig(
            max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **overrides,
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def test_repetition_penalty_changes_the_tiny_models_greedy_answers(tiny_model_dir: Path) -> None:
    """Guard: the file's repetition_penalty matters, so equal answers below prove it unused."""
    from ftsafe_ray.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    plain = _greedy_texts(model, tokenizer, repetition_penalty=1.0)
    penalised = _greedy_texts(
        model, tokenizer, repetition_penalty=DECODING_DEFAULTS["repetition_penalty"]
    )
    assert sum(a != b for a, b in zip(plain, penalised, strict=True)) >= 3


def test_models_generation_config_does_not_change_answers(
    backend: TransformersBackend, opinionated_dir: Path
) -> None:
    opinionated = TransformersBackend(str(opinionated_dir))
    sampled = SamplingSpec(max_new_tokens=8, temperature=1.0, top_p=0.95)
    for sampling, seed in ((GREEDY, 0), (sampled, 3)):
        expected = _rows(backend.generate(_requests(), sampling, seed=seed))
        assert _rows(opinionated.generate(_requests(), sampling, seed=seed)) == expected
