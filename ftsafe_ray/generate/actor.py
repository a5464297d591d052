"""The generator actor: one backend engine serving a base model and its adapters."""

from __future__ import annotations

from dataclasses import replace
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
        revision: str | None = None,
    ):
        from ftsafe_ray.errors import FtsafeError
        from ftsafe_ray.models.resolve import use_torch_threads

        use_torch_threads(num_threads)
        self.backend_name = backend
        self._init_error: FtsafeError | None = None
        try:
            self.backend = _start_backend(model_path, dtype, backend, vllm_settings, revision)
        except FtsafeError as error:
            # Ray reports a failed __init__ as a multi-line ActorDiedError that drops the cause;
            # raised from a method instead, the driver gets the user-facing error itself.
            self._init_error = error

    def generate(
        self, requests: list[Any], sampling: Any, batch_size: int, seed: int = 0
    ) -> list[Any]:
        """Generate answers for a batch of requests, in order."""
        if self._init_error is not None:
            raise self._init_error
        results = self.backend.generate(
            _local_adapters(requests), sampling, batch_size=batch_size, seed=seed
        )
        return [replace(result, node=_node_id()) for result in results]

    def next_token_logprobs(self, requests: list[Any], k: int) -> list[dict[int, float]]:
        """Per request, the k most likely first answer tokens and their log-probabilities."""
        if self._init_error is not None:
            raise self._init_error
        return self.backend.next_token_logprobs(_local_adapters(requests), k)

    def base_module_names(self) -> set[str] | None:
        """The base model's module paths (None when they cannot be read), for adapter checks."""
        if self._init_error is not None:
            raise self._init_error
        return self.backend.base_module_names()


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _local_adapters(requests: list[Any]) -> list[Any]:
    """Requests whose adapters are on object storage, pointed at this node's copy of each."""
    from ftsafe_ray.store.remote import is_remote, materialize

    return [
        replace(r, adapter_path=str(materialize(r.adapter_path)))
        if r.adapter_path and is_remote(r.adapter_path)
        else r
        for r in requests
    ]


def _start_backend(
    model_path: str, dtype: str, backend: str, vllm_settings: Any, revision: str | None
) -> Any:
    from ftsafe_ray.models.resolve import resolve_model_path

    path = resolve_model_path(model_path)
    if backend == "transformers":
        from ftsafe_ray.generate.transformers_backend import TransformersBackend

        return TransformersBackend(path, dtype=dtype, revision=revision)
    if backend == "vllm":
        from ftsafe_ray.generate.vllm_backend import VllmBackend

        return VllmBackend(path, dtype=dtype, settings=vllm_settings, revision=revision)
    raise ValueError(f"generation.backend {backend!r} is unknown; allowed: {BACKENDS}")
