"""The generator actor: one backend engine serving a base model and its adapters."""

from __future__ import annotations

from typing import Any

BACKENDS = ("transformers", "vllm")


class Generator:
    """Holds one generation backend for a base model; answers batches of rows."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        backend: str,
        num_threads: int | None = None,
        vllm_settings: Any = None,
    ):
        from ftsafe_ray.models.resolve import resolve_model_path

        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.backend_name = backend
        path = resolve_model_path(model_path)
        if backend == "transformers":
            from ftsafe_ray.generate.transformers_backend import TransformersBackend

            self.backend: Any = TransformersBackend(path, dtype=dtype)
        elif backend == "vllm":
            from ftsafe_ray.generate.vllm_backend import VllmBackend

            self.backend = VllmBackend(path, dtype=dtype, settings=vllm_settings)
        else:
            raise ValueError(f"generation.backend {backend!r} is unknown; allowed: {BACKENDS}")

    def generate(
        self, requests: list[Any], sampling: Any, batch_size: int, seed: int = 0
    ) -> list[Any]:
        """Generate answers for a batch of requests, in order."""
        return self.backend.generate(requests, sampling, batch_size=batch_size, seed=seed)
