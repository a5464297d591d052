"""Base models: resolve references (built-ins, local dirs, hub ids) and load them lazily."""

from ftsafe_ray.models.resolve import (
    BUILTIN_MODELS,
    default_cache_dir,
    load_model_and_tokenizer,
    loader_kwargs,
    resolve_model_path,
    torch_threads,
    use_torch_threads,
)

__all__ = [
    "BUILTIN_MODELS",
    "default_cache_dir",
    "load_model_and_tokenizer",
    "loader_kwargs",
    "resolve_model_path",
    "torch_threads",
    "use_torch_threads",
]
