"""Model references, the tiny test model, loading, and (slow) the SmolLM2 gguf conversion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftsafe_ray.errors import DataError
from ftsafe_ray.models import (
    BUILTIN_MODELS,
    load_model_and_tokenizer,
    loader_kwargs,
    resolve_model_path,
)
from ftsafe_ray.models.tiny import build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


def test_stage_packages_import_without_torch() -> None:
    code = (
        "import sys, ftsafe_ray.models, ftsafe_ray.finetune, ftsafe_ray.generate; "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_unknown_builtin_names_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        resolve_model_path("builtin:nope", cache_dir=tmp_path)
    for name in BUILTIN_MODELS:
        assert f"builtin:{name}" in str(info.value)


def test_local_dir_and_hub_id_pass_through(tmp_path: Path) -> None:
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("org/some-model") == "org/some-model"


def test_converted_builtin_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = tmp_path / "smollm2-135m-instruct"
    done.mkdir()
    (done / "ftsafe_ray_converted.json").write_text("{}")
    monkeypatch.setenv("FTSAFE_CACHE_DIR", str(tmp_path))
    assert resolve_model_path("builtin:smollm2-135m-instruct") == str(done)


def test_tiny_model_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_llama(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    config = json.loads((again / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert 1000 <= config["vocab_size"] <= 2000


def test_tiny_tokenizer_chat_template(tiny_model_dir: Path) -> None:
    _, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, how are you?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id


def test_load_sets_missing_pad_token(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "nopad"))
    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    model, tokenizer = load_model_and_tokenizer(str(copy))
    assert tokenizer.pad_token == tokenizer.eos_token
    assert not model.training


def test_revision_reaches_every_loaders_arguments() -> None:
    from ftsafe_ray.generate.vllm_backend import engine_args
    from ftsafe_ray.spec import VllmSpec

    assert loader_kwargs(None) == {}
    assert loader_kwargs("v1") == {"revision": "v1"}
    pinned = engine_args("org/m", "float32", VllmSpec(), revision="v1")
    assert pinned["revision"] == "v1" and pinned["tokenizer_revision"] == "v1"
    unpinned = engine_args("/m", "float32", VllmSpec())
    assert "revision" not in unpinned and "tokenizer_revision" not in unpinned
    # the engine decodes from our SamplingParams only, never the model's generation_config.json
    assert pinned["generation_config"] == unpinned["generation_config"] == "vllm"


def _hub_cache(root: Path, repo_id: str, snapshots: dict[str, Path]) -> Path:
    """An offline hub cache holding `repo_id` at each named revision (ref -> model directory)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for number, (ref, source) in enumerate(snapshots.items(), start=1):
        commit = f"{number:040x}"
        shutil.copytree(source, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return root


# Loads the hub model at a revision through each loader the stages use, and prints what it got.
_LOAD_AT_REVISION = """
import json, sys
from ftsafe_ray.finetune.actor import FineTuner
from ftsafe_ray.generate.actor import Generator
from ftsafe_ray.models import load_model_and_tokenizer

repo, revision = sys.argv[1], sys.argv[2] or None
model, tokenizer = load_model_and_tokenizer(repo, revision=revision)
tuner = FineTuner(repo, "float32", None, revision)
generator = Generator(repo, "float32", "transformers", None, None, revision)
models = (model, tuner.model, generator.backend.model)
tokenizers = (tokenizer, tuner.tokenizer, generator.backend.tokenizer)
print(json.dumps({
    "weight": [round(float(m.lm_head.weight.sum()), 3) for m in models],
    "max_length": [t.model_max_length for t in tokenizers],
}))
"""


def test_revision_reaches_the_loaders(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A hub id at a revision loads that revision's weights and tokenizer in every actor."""
    other = build_tiny_llama(tmp_path / "other", seed=1)
    tokenizer_config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(
        json.dumps({**tokenizer_config, "model_max_length": 777})
    )
    cache = _hub_cache(tmp_path / "hub", "ftsafe-test/tiny", {"main": tiny_model_dir, "v1": other})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def load(revision: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_AT_REVISION, "ftsafe-test/tiny", revision],
            check=True,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    main, pinned = load(""), load("v1")
    assert len(set(main["weight"])) == len(set(pinned["weight"])) == 1
    assert main["weight"] != pinned["weight"]
    assert pinned["max_length"] == [777] * 3 and 777 not in main["max_length"]


@pytest.mark.slow
def test_smollm2_gguf_converts_loads_and_generates(tmp_path: Path) -> None:
    import torch

    path = resolve_model_path("builtin:smollm2-135m-instruct", cache_dir=tmp_path)
    files = {p.name for p in Path(path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no tmp dir left
    stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("builtin:smollm2-135m-instruct", cache_dir=tmp_path) == path
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp

    model, tokenizer = load_model_and_tokenizer(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text
