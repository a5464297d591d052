"""The chunked head loss gives F.cross_entropy's losses and input gradients, chunk by chunk."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 1000])
def test_head_losses_equal_cross_entropy_and_its_gradient(monkeypatch, dtype, chunk_rows) -> None:
    import torch
    import torch.nn.functional as F

    from ftsafe_ray.finetune import head_loss

    dtype_ = getattr(torch, dtype)
    vocabulary, width, rows = 50, 8, 10
    monkeypatch.setattr(
        head_loss, "CHUNK_BYTES", chunk_rows * vocabulary * torch.finfo(dtype_).bits // 8
    )
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(vocabulary, width, generator=generator, dtype=dtype_)
    hidden = torch.randn(rows, width, generator=generator, dtype=dtype_, requires_grad=True)
    targets = torch.randint(0, vocabulary, (rows,), generator=generator)
    upstream = torch.rand(rows, generator=generator, dtype=dtype_)  # per-row loss weights

    expected = F.cross_entropy(F.linear(hidden, weight), targets, reduction="none")
    (expected * upstream).sum().backward()
    expected_grad, hidden.grad = hidden.grad, None

    losses = head_loss.head_losses(hidden, weight, targets)
    (losses * upstream).sum().backward()
    tolerance = {"float32": 1e-5, "float64": 1e-12}[dtype]
    assert losses.dtype == dtype_
    assert torch.allclose(losses, expected, rtol=tolerance, atol=tolerance)
    assert torch.allclose(hidden.grad, expected_grad, rtol=tolerance, atol=tolerance)


def test_head_losses_under_bf16_autocast_follow_the_autocast_reference() -> None:
    import torch
    import torch.nn.functional as F

    from ftsafe_ray.finetune.head_loss import head_losses

    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 16, generator=generator)
    hidden = torch.randn(12, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 64, (12,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")
        losses = head_losses(hidden, weight, targets)
    expected.sum().backward()
    expected_grad, hidden.grad = hidden.grad, None
    losses.sum().backward()
    assert losses.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert torch.allclose(losses, expected, rtol=2e-2, atol=2e-2)
    assert torch.allclose(hidden.grad, expected_grad, rtol=5e-2, atol=5e-2)
