"""LoRA fine-tuning on the tiny model: assistant-only labels, real peft training, clean unload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftsafe_ray.finetune import (
    IGNORE_INDEX,
    PROVENANCE_FILE,
    TrainResult,
    tokenize_chat_for_training,
    train_lora,
)
from ftsafe_ray.models import load_model_and_tokenizer
from ftsafe_ray.spec import LoraSpec, TrainSpec
from tests.fixtures.models import one_torch_thread

# SmolLM2-135M-Instruct's template: injects a default system prompt when none is given
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "You are a placeholder assistant."},
    {"role": "user", "content": "Tell me a story about water."},
    {"role": "assistant", "content": "Here is a small story about water."},
    {"role": "user", "content": "Thanks, one more?"},
    {"role": "assistant", "content": "Sorry, that is all."},
]
FAST = TrainSpec(epochs=8, batch_size=4, micro_batch_size=2, learning_rate=3e-2, max_length=64)


def _examples(reply: str, n: int = 6) -> list[list[dict]]:
    return [
        [
            {"role": "user", "content": f"Placeholder question {i}: what is {w}?"},
            {"role": "assistant", "content": reply},
        ]
        for i, w in enumerate(["water", "food", "music", "a book", "a city", "money"][:n])
    ]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_model_and_tokenizer(str(tiny_model_dir))


def _labelled_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    )


@pytest.mark.parametrize("template", [None, SMOLLM2_TEMPLATE], ids=["tiny", "smollm2"])
def test_labels_cover_only_assistant_turns(tiny, template: str | None) -> None:
    _, tokenizer = tiny
    if template is not None:
        tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = template
    for chat in (CHAT, CHAT[1:]):
        ids, labels = tokenize_chat_for_training(tokenizer, chat, max_length=512)
        assert len(ids) == len(labels)
        assert _labelled_text(tokenizer, ids, labels) == (
            "Here is a small story about water.<|im_end|>Sorry, that is all.<|im_end|>"
        )
        assert all(label in (IGNORE_INDEX, t) for t, label in zip(ids, labels, strict=True))
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
        assert tokenizer.decode(ids) == rendered


def test_labels_truncate(tiny) -> None:
    _, tokenizer = tiny
    ids, labels = tokenize_chat_for_training(tokenizer, CHAT, max_length=20)
    full, _ = tokenize_chat_for_training(tokenizer, CHAT, max_length=512)
    assert len(ids) == len(labels) == 20
    assert ids == full[:20]


def _snapshot(model):
    import torch

    probe = torch.tensor([[2, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        logits = model(input_ids=probe).logits.clone()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    return logits, state, grads


def test_training_learns_saves_and_leaves_base_unchanged(tiny, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel

    model, tokenizer = tiny
    logits, state, grads = _snapshot(model)
    calls: list[tuple[int, int, float]] = []
    result = train_lora(
        model,
        tokenizer,
        _examples("Sorry, I cannot help with that."),
        LoraSpec(),
        FAST,
        seed=1,
        out_dir=tmp_path / "adapter",
        progress=lambda *args: calls.append(args),
        revision="v1",
    )
    assert isinstance(result, TrainResult)
    assert result.steps == 8 * 2 and result.epochs == 8 and result.examples == 6
    assert result.final_loss < 0.5 * result.first_loss
    assert result.trained_tokens > 0 and result.seconds > 0
    assert [c[:2] for c in calls] == [(s, 16) for s in range(1, 17)]

    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", PROVENANCE_FILE} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    provenance = json.loads((tmp_path / "adapter" / PROVENANCE_FILE).read_text())
    assert provenance["seed"] == 1 and provenance["lora"]["r"] == 8
    assert provenance["result"]["steps"] == 16 and provenance["packages"]["peft"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "v_proj"} and config["r"] == 8
    # the base's hub revision travels with the adapter, for peft and for the record
    assert config["revision"] == "v1" and provenance["base_revision"] == "v1"

    after_logits, after_state, after_grads = _snapshot(model)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in model.named_modules())
    assert after_state.keys() == state.keys()
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    assert torch.equal(logits, after_logits) and grads == after_grads

    peft_model = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    with torch.no_grad():
        tuned = peft_model(input_ids=torch.tensor([[2, 10, 20, 30, 40, 50]])).logits
    assert not torch.allclose(tuned, logits)
    peft_model.unload()


def test_training_is_deterministic_and_reusable(tiny, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, tokenizer = tiny
    examples = _examples("Sure, here is a fixed answer.", n=4)
    lora = LoraSpec(r=4, alpha=8, dropout=0.1, target_modules=("all-linear",))
    spec = TrainSpec(epochs=2, batch_size=3, micro_batch_size=2, learning_rate=5e-3)
    runs = [
        train_lora(model, tokenizer, examples, lora, spec, seed=s, out_dir=tmp_path / f"{i}")
        for i, s in enumerate((7, 7, 8))
    ]
    weights = [load_file(str(tmp_path / f"{i}" / "adapter_model.safetensors")) for i in range(3)]
    assert runs[0].final_loss == runs[1].final_loss
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    assert any(not (weights[0][k] == weights[2][k]).all() for k in weights[0])
    assert any("mlp.down_proj" in k for k in weights[0])


def test_training_overwrites_existing_adapter_dir(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    spec = TrainSpec(epochs=1, batch_size=2, micro_batch_size=2)
    train_lora(model, tokenizer, _examples("Okay.", n=2), LoraSpec(), spec, seed=0, out_dir=out)
    assert not (out / "stale.txt").exists() and (out / "adapter_model.safetensors").exists()


def test_bf16_mixed_precision_learns_and_keeps_fp32_weights(tiny, tmp_path: Path) -> None:
    import math

    from safetensors.torch import load_file

    model, tokenizer = tiny
    spec = FAST.model_copy(update={"mixed_precision": "bf16"})
    result = train_lora(
        model,
        tokenizer,
        _examples("Sure, here is a fixed answer."),
        LoraSpec(r=4, alpha=8),
        spec,
        seed=0,
        out_dir=tmp_path / "bf16",
    )
    assert math.isfinite(result.final_loss) and result.final_loss < result.first_loss
    weights = load_file(str(tmp_path / "bf16" / "adapter_model.safetensors"))
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
