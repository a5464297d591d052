"""Check a LoRA adapter directory before an engine loads it: rank, shape, base model, weights."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from ftsafe_ray.errors import StageError

# peft's saved names of B weights: "<module>.lora_B.weight"; on embeddings "...lora_embedding_B"
_LORA_B = re.compile(r"\.lora(_embedding)?_B(\.|$)")


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


def checkpoint_module_names(model_path: str, revision: str | None = None) -> set[str] | None:
    """Module paths of a base model read from its safetensors key names, without loading weights.

    A hub id is looked up in the local hub cache only (the engine downloaded it there); None when
    no safetensors checkpoint is found, so callers can tell "unknown" from "no such module".
    """
    from safetensors import safe_open

    folder = Path(model_path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_path, revision=revision, local_files_only=True))
        except Exception:  # any hub failure means only that the names are unknown
            return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        keys = set(json.loads(index.read_text()).get("weight_map", {}))
    else:
        keys = set()
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="numpy") as handle:  # keys only: no torch
                keys.update(handle.keys())
    # a parameter key is "<module path>.<parameter>"; the module path is what peft matches
    return {key.rsplit(".", 1)[0] for key in keys if "." in key} or None


def unmatched_targets(path: str | Path, module_names: Collection[str]) -> list[str]:
    """target_modules entries of an adapter that match no module of the base, as peft matches.

    peft reads a string as a regular expression over full module paths and a list entry as a
    module-path suffix; "all-linear" names no module and so cannot be checked here.
    """
    targets = json.loads((Path(path) / "adapter_config.json").read_text()).get("target_modules")
    if not targets:
        return []
    if isinstance(targets, str):
        if targets == "all-linear" or any(re.fullmatch(targets, n) for n in module_names):
            return []
        return [targets]
    return [
        entry
        for entry in targets
        if entry != "all-linear"
        and not any(n == entry or n.endswith("." + entry) for n in module_names)
    ]


def lora_b_state(path: str | Path) -> str:
    """'trained' when some LoRA B weight is non-zero, 'zero' when all are, 'missing' if none.

    peft initialises every B matrix to zero, so an adapter whose B weights are all zero adds
    exactly nothing to the base model: it was never trained, or its training did not update it.
    A safetensors file is read without torch (the driver runs this check, and a cluster's
    head need not load torch at all); a pickled adapter_model.bin needs torch to be read.
    """
    folder = Path(path)
    if (folder / "adapter_model.safetensors").is_file():
        states = [
            _nonzero(data, dtype)
            for name, dtype, data in _safetensors_tensors(folder / "adapter_model.safetensors")
            if _LORA_B.search(name)
        ]
        return "missing" if not states else "trained" if any(states) else "zero"
    if (folder / "adapter_model.bin").is_file():
        import torch

        weights = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
        found = False
        for key, tensor in weights.items():
            if _LORA_B.search(key):
                found = True
                if bool(torch.any(tensor != 0)):
                    return "trained"
        return "zero" if found else "missing"
    return "missing"


# Bytes per element of the safetensors dtypes a LoRA weight can have.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def _safetensors_tensors(file: Path) -> Iterator[tuple[str, str, bytes]]:
    """(name, dtype, raw bytes) of each tensor of a safetensors file, read by its documented
    layout: an 8-byte little-endian header length, a JSON header, then the data."""
    with file.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        start = 8 + size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            handle.seek(start + begin)
            yield name, entry["dtype"], handle.read(end - begin)


def _nonzero(data: bytes, dtype: str) -> bool:
    """Whether a float tensor's raw bytes hold a value other than ±0 (what `tensor != 0` finds:
    NaN counts as non-zero, -0.0 does not): any element with a bit set besides its sign bit."""
    import numpy as np

    width = _ITEM_BYTES.get(dtype)
    if width is None:  # an integer dtype: every set bit is a non-zero value
        return any(data)
    elements = np.frombuffer(data, dtype=f"<u{width}")
    return bool(np.any(elements & ((1 << (8 * width - 1)) - 1)))
