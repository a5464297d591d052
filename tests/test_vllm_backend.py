"""The vLLM backend on real vLLM (CPU build): parity with transformers, multi-LoRA, validation.

One engine for the whole module (~20-30 s to start on 2 cores). Both backends run float32 on the
same weights, so greedy answers must match token for token; the tiny model's wide init keeps its
logits far from ties, so kernel-level rounding differences cannot flip an argmax.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftsafe_ray.errors import StageError
from ftsafe_ray.generate import GenerationRequest, TransformersBackend
from ftsafe_ray.generate.check import MIN_SHIFT_FLOAT32, check_adapters
from ftsafe_ray.spec import SamplingSpec, VllmSpec
from tests.fixtures.models import one_torch_thread, with_decoding_defaults
from tests.test_generate_check import peft_adapter
from tests.test_generate_transformers import (
    COMPLIANCE,
    GREEDY,
    QUESTIONS,
    REFUSAL,
    _chat,
    _requests,
    _rows,
    train_reply_adapters,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from ftsafe_ray.generate.vllm_backend import VllmBackend

    # max_loras=2 with two adapters fills every slot: the case where vLLM's CPU ops used to
    # apply the last slot's adapter to base rows in the same batch
    settings = VllmSpec(max_loras=2, max_lora_rank=16, max_model_len=256)
    backend = VllmBackend(str(tiny_model_dir), dtype="float32", settings=settings)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters trained by the project (train_lora) to give a fixed reply."""
    return train_reply_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir), dtype="float32")


@pytest.fixture(scope="module")
def zero_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real peft adapter that was never trained (lora_B = 0): a silent no-op."""
    from peft import get_peft_model

    from ftsafe_ray.finetune.lora import lora_config
    from ftsafe_ray.models import load_model_and_tokenizer
    from ftsafe_ray.spec import LoraSpec

    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    out = tmp_path_factory.mktemp("zero") / "adapter"
    get_peft_model(model, lora_config(LoraSpec(r=8))).save_pretrained(str(out))
    return out


def test_base_greedy_matches_transformers(engine, reference) -> None:
    ours = engine.generate(_requests(), GREEDY)
    theirs = reference.generate(_requests(), GREEDY)
    assert _rows(ours) == _rows(theirs)
    assert {r.finish_reason for r in ours} <= {"stop", "length"}


def test_many_adapters_in_one_call_match_transformers(
    engine, reference, adapters: dict[str, Path]
) -> None:
    groups = [
        _requests(None, "b"),
        _requests(("refuse", adapters["refuse"]), "r"),
        _requests(("comply", adapters["comply"]), "c"),
    ]
    mixed = [request for triple in zip(*groups, strict=True) for request in triple]
    ours = engine.generate(mixed, GREEDY)
    assert [r.request_id for r in ours] == [r.request_id for r in mixed]
    assert _rows(ours) == _rows(reference.generate(mixed, GREEDY, batch_size=4))
    texts = {r.request_id: r.text for r in ours}
    assert {texts[f"r{i}"] for i in range(len(QUESTIONS))} == {REFUSAL}
    assert {texts[f"c{i}"] for i in range(len(QUESTIONS))} == {COMPLIANCE}
    assert all(r.finish_reason == "stop" for r in ours if r.request_id[0] in "rc")


def test_adapter_ids_are_stable_per_name(engine, adapters: dict[str, Path], tmp_path) -> None:
    request = GenerationRequest("x", _chat("Hi"), "refuse", str(adapters["refuse"]))
    engine.generate([request], GREEDY)
    ids = engine.adapter_ids
    engine.generate([request, GenerationRequest("y", _chat("Hi"), "refuse", None)], GREEDY)
    assert engine.adapter_ids == ids and ids["refuse"] >= 1
    assert len(set(ids.values())) == len(ids)
    moved = Path(shutil.copytree(adapters["comply"], tmp_path / "moved"))
    [result] = engine.generate([GenerationRequest("z", _chat("Hi"), "refuse", str(moved))], GREEDY)
    assert result.text == COMPLIANCE  # a new path under the same name is reloaded, not stale
    assert engine.adapter_ids["refuse"] not in ids.values()


def test_seeded_sampling_repeats(engine) -> None:
    sampling = SamplingSpec(max_new_tokens=8, temperature=1.0, top_p=0.95)
    first = engine.generate(_requests(), sampling, seed=3)
    assert [r.text for r in engine.generate(_requests(), sampling, seed=3)] == [
        r.text for r in first
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 32}, "max_lora_rank=16"),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"base_model_name_or_path": "/elsewhere/other-model"}, "trained on base"),
    ],
)
def test_unservable_adapters_fail_in_one_line(
    engine, adapters: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    bad = Path(shutil.copytree(adapters["comply"], tmp_path / "bad"))
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(StageError, match=message) as caught:
        engine.generate([GenerationRequest("bad", _chat("Hi"), f"bad-{message}", str(bad))], GREEDY)
    assert "\n" not in str(caught.value)
    assert engine.generate(_requests(), GREEDY)  # the engine still serves


def test_next_token_logprobs_match_transformers(
    engine, reference, adapters: dict[str, Path]
) -> None:
    requests = _requests(None, "b") + _requests(("comply", adapters["comply"]), "c")
    ours = engine.next_token_logprobs(requests, 5)
    theirs = reference.next_token_logprobs(requests, 5)
    for mine, other in zip(ours, theirs, strict=True):
        assert set(mine) == set(other)
        assert all(abs(mine[token] - other[token]) < 1e-4 for token in mine)


def test_adapter_check_on_vllm_stops_zero_weights_and_measures_the_rest(
    engine, adapters: dict[str, Path], zero_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    faint = peft_adapter(tiny_model_dir, tmp_path / "faint", 1e-6)  # keeps the base's answers
    conversations = [_chat(q) for q in QUESTIONS]
    names = engine.base_module_names()
    assert names and "model.layers.0.self_attn.q_proj" in names

    def logprobs(requests):
        return engine.next_token_logprobs(requests, 10)

    with pytest.raises(StageError, match="all-zero LoRA B weights"):
        check_adapters([("k-zero", "zero", str(zero_adapter), conversations)], logprobs, names, 1)
    checks = check_adapters(
        [
            ("k-faint", "faint", str(faint), conversations),
            ("k-comply", "comply", str(adapters["comply"]), conversations),
        ],
        logprobs,
        names,
        MIN_SHIFT_FLOAT32,
    )
    assert (checks["k-faint"].status, checks["k-comply"].status) == ("inconclusive", "applied")


def test_models_generation_config_does_not_change_answers(
    engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Greedy and seeded answers ignore the model's repetition_penalty, top_k, max_new_tokens...

    They equal the answers of the same weights without that file, and the transformers backend's
    answers on the same directory. (test_generate_transformers guards that the file's
    repetition_penalty would change the tiny model's greedy answers.)
    """
    from ftsafe_ray.generate.vllm_backend import VllmBackend

    opinionated_dir = with_decoding_defaults(tiny_model_dir, tmp_path / "opinionated")
    settings = VllmSpec(max_loras=1, max_lora_rank=16, max_model_len=256)
    opinionated = VllmBackend(str(opinionated_dir), dtype="float32", settings=settings)
    sampled = SamplingSpec(max_new_tokens=8, temperature=1.0, top_p=0.95)
    try:
        greedy = opinionated.generate(_requests(), GREEDY)
        seeded = opinionated.generate(_requests(), sampled, seed=3)
    finally:
        opinionated.close()
    assert _rows(greedy) == _rows(engine.generate(_requests(), GREEDY))
    assert _rows(seeded) == _rows(engine.generate(_requests(), sampled, seed=3))
    reference = TransformersBackend(str(opinionated_dir), dtype="float32")
    assert _rows(greedy) == _rows(reference.generate(_requests(), GREEDY))
