"""The driver's adapter check reads LoRA B weights from safetensors without torch, with the
verdict `torch.any(tensor != 0)` gives (NaN non-zero, -0.0 zero) for every float dtype."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ftsafe_ray.generate.adapters import lora_b_state

B = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"
A = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"


def torch_verdict(tensors: dict[str, torch.Tensor]) -> str:
    b = [t for name, t in tensors.items() if ".lora_B." in name]
    return "missing" if not b else "trained" if any(bool((t != 0).any()) for t in b) else "zero"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "b_values",
    [None, [0.0, 0.0], [-0.0, 0.0], [0.0, 1e-30], [float("nan"), 0.0], [-3.5, 0.0]],
)
def test_the_b_weight_verdict_is_torchs(tmp_path, dtype, b_values):
    tensors = {A: torch.ones(2, 2, dtype=dtype)}
    if b_values is not None:
        tensors[B] = torch.tensor([b_values], dtype=dtype)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"), metadata={"format": "pt"})
    assert lora_b_state(tmp_path) == torch_verdict(tensors)


def test_the_check_never_imports_torch(tmp_path):
    save_file({B: torch.zeros(2, 2)}, str(tmp_path / "adapter_model.safetensors"))
    probe = (
        "import sys; from ftsafe_ray.generate.adapters import lora_b_state, "
        "checkpoint_module_names; "
        f"print(lora_b_state({str(tmp_path)!r}), checkpoint_module_names({str(tmp_path)!r})); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "zero",
        "{'base_model.model.layers.0.self_attn.q_proj.lora_B'}",
        "False",
    ]
