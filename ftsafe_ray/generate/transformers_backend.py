"""Batched chat generation with transformers, many LoRA adapters on one base model."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from ftsafe_ray.generate.requests import FinishReason, GenerationRequest, GenerationResult
from ftsafe_ray.spec import SamplingSpec

DEFAULT_MAX_ADAPTERS = 8


class TransformersBackend:
    """Loads a base model once and serves base and LoRA requests in left-padded batches."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
        revision: str | None = None,
    ) -> None:
        """Load the model and tokenizer (see models.resolve_model_path), at `revision` if given."""
        from ftsafe_ray.models import load_model_and_tokenizer

        self.model_path = model_path
        self.model, self.tokenizer = load_model_and_tokenizer(model_path, dtype, revision)
        self.tokenizer.padding_side = "left"
        # answers follow the spec alone: of the model's generation_config.json only the token ids
        # stay (its extra end-of-turn ids stop answers here as they do in vLLM)
        self._eos_ids = _eos_ids(self.tokenizer, self.model)
        self.model.generation_config = _token_ids_only(self.model.generation_config)
        self.max_adapters = max(1, max_adapters)
        self._peft: Any = None
        self._adapters: OrderedDict[str, tuple[str, str]] = OrderedDict()  # name -> slot, path
        # taken before peft injects its lora_A/lora_B modules into the same model object
        self._module_names = {name for name, _ in self.model.named_modules() if name}

    @property
    def loaded_adapters(self) -> list[str]:
        """Adapter names currently held, least recently used first."""
        return list(self._adapters)

    def generate(
        self,
        requests: list[GenerationRequest],
        sampling: SamplingSpec,
        batch_size: int = 16,
        seed: int = 0,
    ) -> list[GenerationResult]:
        """Complete every request; results come back in the order of the requests."""
        groups: dict[str | None, list[int]] = {}
        for index, request in enumerate(requests):
            name = request.adapter_name
            if name is None and request.adapter_path is not None:
                name = request.adapter_path
            groups.setdefault(name, []).append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        for name, indices in groups.items():
            prompts = {i: self._prompt_ids(requests[i].messages) for i in indices}
            # similar lengths together: less padding per batch
            ordered = sorted(indices, key=lambda i: len(prompts[i]))
            for begin in range(0, len(ordered), max(1, batch_size)):
                chunk = ordered[begin : begin + max(1, batch_size)]
                model = self._model_for(name, requests[chunk[0]].adapter_path)
                outputs = self._generate_batch(model, [prompts[i] for i in chunk], sampling, seed)
                for i, (text, n_prompt, n_out, reason) in zip(chunk, outputs, strict=True):
                    results[i] = GenerationResult(
                        requests[i].request_id, text, n_prompt, n_out, reason
                    )
        return [r for r in results if r is not None]

    def next_token_logprobs(
        self, requests: list[GenerationRequest], k: int = 10
    ) -> list[dict[int, float]]:
        """Per request, the k most likely first answer tokens and their log-probabilities.

        One unpadded forward pass per request: the probes are few, and left padding would shift
        position ids (a forward call does not derive them from the mask as generate does).
        """
        import torch

        device = next(self.model.parameters()).device
        answers = []
        for request in requests:
            name = request.adapter_name
            if name is None:
                name = request.adapter_path  # named by path, as in generate
            model = self._model_for(name, request.adapter_path)
            ids = torch.tensor([self._prompt_ids(request.messages)], device=device)
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, -1].float()
            top = torch.topk(torch.log_softmax(logits, dim=-1), min(k, logits.numel()))
            answers.append(dict(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
        return answers

    def base_module_names(self) -> set[str]:
        """Module paths of the base model as loaded, the names peft matches target_modules to."""
        return set(self._module_names)

    def _prompt_ids(self, messages: tuple[dict, ...] | list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _model_for(self, name: str | None, path: str | None) -> Any:
        """The model to call: the base with adapters disabled, or the peft model on `name`."""
        if name is None:
            return _BaseView(self._peft) if self._peft is not None else self.model
        if name not in self._adapters or (path is not None and self._adapters[name][1] != path):
            if path is None:
                raise ValueError(f"adapter {name!r} is not loaded and the request has no path")
            self._load_adapter(name, path)
        self._adapters.move_to_end(name)
        self._peft.set_adapter(self._adapters[name][0])
        return self._peft

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        # peft keys modules by adapter name, which must not contain '.', so use a digest
        slot = "a_" + hashlib.sha256(name.encode()).hexdigest()[:16]
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=slot)
            self._peft.eval()
        else:
            if name in self._adapters:
                self._drop(name)
            self._peft.load_adapter(path, adapter_name=slot)
        self._adapters[name] = (slot, path)
        while len(self._adapters) > self.max_adapters:
            self._drop(next(iter(self._adapters)))

    def _drop(self, name: str) -> None:
        slot, _ = self._adapters.pop(name)
        others = [n for n in self._peft.peft_config if n != slot]
        if others:
            self._peft.set_adapter(others[0])
        self._peft.delete_adapter(slot)

    def _generate_batch(
        self, model: Any, prompts: list[list[int]], sampling: SamplingSpec, seed: int
    ) -> list[tuple[str, int, int, FinishReason]]:
        import torch

        tokenizer = self.tokenizer
        width = max(len(p) for p in prompts)
        pad_id = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        eos_ids = self._eos_ids
        config = spec_generation_config(sampling, eos_ids, pad_id)
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
            )
        new_tokens = output[:, width:].tolist()
        results: list[tuple[str, int, int, FinishReason]] = []
        for prompt, tokens in zip(prompts, new_tokens, strict=True):
            stop = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
            kept = tokens if stop is None else tokens[: stop + 1]
            text = tokenizer.decode(kept, skip_special_tokens=True)
            reason: FinishReason = "length" if stop is None else "stop"
            results.append((text, len(prompt), len(kept), reason))
        return results


def spec_generation_config(sampling: SamplingSpec, eos_ids: list[int], pad_id: int) -> Any:
    """A GenerationConfig from the spec's sampling settings, with every other knob neutral.

    transformers 5 fills each field left None here from the model's own generation_config (and
    then from its global defaults, top_k=50 among them), so the knobs the spec does not have are
    set to their no-op values rather than left unset; the backend also strips the model's
    config down to token ids (see _token_ids_only), so no field can come from it.
    """
    from transformers import GenerationConfig

    greedy = sampling.temperature == 0
    return GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        # 0 turns top-k off, as in vLLM's SamplingParams; greedy leaves it None because
        # transformers warns about sampling-only flags set while do_sample is False
        top_k=None if greedy else 0,
        repetition_penalty=1.0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )


def _token_ids_only(config: Any) -> Any:
    """The model's generation config without its decoding defaults (penalties, top_k, ...)."""
    from transformers import GenerationConfig

    names = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return GenerationConfig(**{n: getattr(config, n, None) for n in names})


class _BaseView:
    """Calls generate (or a forward pass) on a peft model with every adapter disabled."""

    def __init__(self, peft_model: Any) -> None:
        self._peft = peft_model

    def generate(self, **kwargs: Any) -> Any:
        with self._peft.disable_adapter():
            return self._peft.generate(**kwargs)

    def __call__(self, **kwargs: Any) -> Any:
        with self._peft.disable_adapter():
            return self._peft(**kwargs)


def _eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """End-of-turn ids from both tokenizer and generation config, without duplicates."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids
