"""Check a LoRA adapter directory before an engine loads it: rank, shape, base model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ftsafe_ray.errors import StageError


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter_config.json says about an adapter."""

    path: str
    rank: int
    base_model: str | None
    target_modules: tuple[str, ...]


def read_adapter(path: str | Path) -> AdapterInfo:
    """Parse adapter_config.json, raising a one-line StageError when it is missing or broken."""
    config_file = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise StageError(
            f"adapter {path}: no adapter_config.json; is it a peft LoRA adapter?"
        ) from None
    except (OSError, ValueError) as error:
        raise StageError(f"adapter {path}: adapter_config.json is unreadable ({error})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise StageError(f"adapter {path}: peft_type {config['peft_type']!r} is not LORA")
    targets = config.get("target_modules") or ()
    return AdapterInfo(
        path=str(path),
        rank=int(config.get("r", 0)),
        base_model=config.get("base_model_name_or_path"),
        target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
    )


def validate_for_vllm(path: str | Path, base_model: str, max_lora_rank: int) -> AdapterInfo:
    """Refuse adapters vLLM would reject or misapply, naming the setting to change."""
    info = read_adapter(path)
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    if info.rank > max_lora_rank:
        raise StageError(
            f"adapter {path}: rank r={info.rank} exceeds generation.vllm.max_lora_rank="
            f"{max_lora_rank}; raise max_lora_rank (1, 8, 16, 32, 64, 128, 256, 320, 512)"
        )
    if config.get("modules_to_save"):
        raise StageError(
            f"adapter {path}: modules_to_save={config['modules_to_save']} is not served by the "
            "vLLM backend; retrain without it or use generation.backend: transformers"
        )
    if config.get("use_dora"):
        raise StageError(
            f"adapter {path}: DoRA (use_dora: true) is not served by the vLLM backend; "
            "retrain without it or use generation.backend: transformers"
        )
    if not same_base(info.base_model, base_model):
        raise StageError(
            f"adapter {path}: trained on base {info.base_model!r}, but this engine serves "
            f"{base_model!r}; generate it with the model it was trained on"
        )
    return info


def same_base(recorded: str | None, served: str) -> bool:
    """Whether an adapter's recorded base model is the served one (unrecorded counts as yes)."""
    if not recorded:
        return True
    if recorded == served:
        return True
    if os.path.isdir(recorded) and os.path.isdir(served):
        return os.path.realpath(recorded) == os.path.realpath(served)
    return recorded.rstrip("/") == served.rstrip("/")
