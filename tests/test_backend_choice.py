"""`generation.backend: auto` picks vLLM on GPUs and on CPUs with AVX-512, transformers elsewhere,
and says why."""

from __future__ import annotations

from ftsafe_ray.generate.backend_choice import choose_backend, cpu_flags

AVX512 = frozenset({"fpu", "avx2", "avx512f", "avx512bw"})
AVX2 = frozenset({"fpu", "avx2", "fma"})


def test_auto_follows_where_generation_runs():
    assert choose_backend("auto", 1, True, AVX2).name == "vllm"
    assert choose_backend("auto", 0, True, AVX512).name == "vllm"
    slower = choose_backend("auto", 0, True, AVX2)
    assert slower.name == "transformers" and "without AVX-512" in slower.reason
    assert "generation.backend: vllm" in slower.reason  # the way to override it
    missing = choose_backend("auto", 1, False, AVX512)
    assert missing.name == "transformers" and missing.reason == "vLLM is not installed"
    # A backend the campaign names is used as named.
    assert choose_backend("vllm", 0, False, AVX2).name == "vllm"
    assert choose_backend("transformers", 1, True, AVX512).name == "transformers"


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512f"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert cpu_flags(arm) == {"fp", "asimd", "sve"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
