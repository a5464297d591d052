"""Next-token cross-entropy under a frozen output head, a chunk of rows at a time.

Each chunk's gradient with respect to its hidden rows (softmax minus one-hot, through the head)
is computed with its loss, so the vocabulary-wide logits, their log-softmax and that
log-softmax's gradient never exist for all rows at once (for 1,200 trained positions of
SmolLM2's 49,152-token vocabulary that is 236 MB, three times over), and the backward pass only
scales the stored row gradients. On the 2-core bench machine this halves the head's share of a
grouped step apart from its two matmuls. Imported lazily: it needs torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ftsafe_ray.finetune.lora import autocast_dtype

# A chunk's logits: under 32 MiB, the largest block glibc reuses from its heap as
# models/malloc.py sets it (so no page faults on each chunk), and rows enough for the matmul
# to run at full speed (128 rows of a 49,152-token vocabulary in float32).
CHUNK_BYTES = 31 * 2**20


def head_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's loss, [rows]: what
    `F.cross_entropy(at_least_float32(F.linear(hidden, weight)), targets, reduction="none")`
    gives (to rounding), with its gradient with respect to `hidden`. `weight` is frozen: it
    gets no gradient. Under autocast the head computes in autocast's dtype, as F.linear would,
    and the softmax in at least float32."""
    out = _HeadLosses.apply(hidden, weight, targets)
    assert isinstance(out, torch.Tensor)
    return out


class _HeadLosses(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        dtype = autocast_dtype(hidden)
        head = weight if dtype is None else weight.to(dtype)
        rows, vocabulary = hidden.shape[0], weight.shape[0]
        logit_dtype = torch.promote_types(head.dtype, torch.float32)
        chunk = max(1, CHUNK_BYTES // (vocabulary * torch.finfo(logit_dtype).bits // 8))
        losses = torch.empty(rows, dtype=logit_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, rows, chunk):
            end = min(rows, start + chunk)
            part = hidden[start:end] if dtype is None else hidden[start:end].to(dtype)
            logits = F.linear(part, head).to(logit_dtype)
            picked = targets[start:end]
            norm = torch.logsumexp(logits, dim=1)
            losses[start:end] = norm - logits.gather(1, picked[:, None]).squeeze(1)
            probs = logits.sub_(norm[:, None]).exp_()  # softmax, in the logits' memory
            probs[torch.arange(end - start, device=probs.device), picked] -= 1
            grad_hidden[start:end] = probs.to(head.dtype) @ head
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None
