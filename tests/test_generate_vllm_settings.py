"""vLLM settings and adapter checks without an engine: spec errors, engine args, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftsafe_ray.errors import SpecError, StageError
from ftsafe_ray.generate.adapters import read_adapter, same_base, validate_for_vllm
from ftsafe_ray.generate.vllm_backend import engine_args
from ftsafe_ray.spec import VllmSpec, parse_campaign


def campaign(generation: dict) -> dict:
    return {
        "name": "c",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/models/m"}],
        "benchmarks": [{"name": "b", "source": "builtin:demo_harmful"}],
        "generation": generation,
    }


@pytest.mark.parametrize(
    ("generation", "message"),
    [
        (
            {"backend": "vllm", "num_gpus": 0.5},
            "generation: vllm.gpu_memory_utilization: 0.9 exceeds this actor's GPU share "
            "num_gpus=0.5; set it <= 0.5",
        ),
        (
            {"backend": "vllm", "num_gpus": 1, "vllm": {"tensor_parallel_size": 4}},
            "num_gpus: 1 must equal vllm.tensor_parallel_size 4",
        ),
        ({"vllm": {"max_loras": 4, "max_cpu_loras": 2}}, "max_cpu_loras: 2 is below"),
        ({"vllm": {"max_lora_rank": 12}}, "generation.vllm.max_lora_rank"),
        ({"vllm": {"max_lora": 2}}, "generation.vllm.max_lora: unknown field"),
    ],
)
def test_bad_vllm_settings_name_the_field(generation: dict, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_campaign(campaign(generation), source="c.yaml")
    assert message in str(caught.value)


def test_good_settings_become_engine_args() -> None:
    spec = parse_campaign(
        campaign(
            {
                "backend": "vllm",
                "num_gpus": 4,
                "check_adapters": False,
                "vllm": {"tensor_parallel_size": 4, "max_loras": 8, "max_model_len": 4096},
            }
        )
    )
    assert spec.generation.check_adapters is False
    args = engine_args("/models/m", "bfloat16", spec.generation.vllm)
    assert args["enable_lora"] is True and args["max_loras"] == 8 and args["max_lora_rank"] == 16
    assert args["tensor_parallel_size"] == 4 and args["distributed_executor_backend"] == "mp"
    assert args["max_model_len"] == 4096 and "max_num_seqs" not in args
    assert "distributed_executor_backend" not in engine_args("/m", "float32", VllmSpec())


def _adapter(tmp_path: Path, **config) -> Path:
    base = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**base, **config}))
    return tmp_path


def test_adapter_checks(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    good = _adapter(tmp_path / "good", base_model_name_or_path=str(model))
    assert read_adapter(good).rank == 8
    assert validate_for_vllm(good, str(model) + "/", 16).target_modules == ("q_proj", "v_proj")
    (tmp_path / "link").symlink_to(model)
    assert validate_for_vllm(good, str(tmp_path / "link"), 8).rank == 8
    with pytest.raises(StageError, match=r"no adapter_config\.json"):
        read_adapter(tmp_path / "missing")
    with pytest.raises(StageError, match="is not LORA"):
        read_adapter(_adapter(tmp_path / "ia3", peft_type="IA3"))
    with pytest.raises(StageError, match=r"r=32 exceeds generation.vllm.max_lora_rank=16"):
        validate_for_vllm(_adapter(tmp_path / "big", r=32), str(model), 16)
    with pytest.raises(StageError, match="trained on base 'org/other'"):
        validate_for_vllm(_adapter(tmp_path / "o", base_model_name_or_path="org/other"), "x", 16)
    assert same_base(None, "anything") and same_base("org/m", "org/m")
