"""Sequence packing: examples laid end to end in one row, attention kept within each example.

A packed batch has no padding: the examples of a forward pass (of one or several adapters, each
adapter's examples contiguous) form one sequence. Position ids restart at 0 for each example and
attention runs per example (`packed_attention`: SDPA with `is_causal` on each example's slice,
the varlen scheme of flash-attention done with the kernel CPUs have), so no token sees another
example's tokens and each example's loss is what it would be alone. transformers' own packed
path (a block-diagonal mask built from reset position ids, taken only with `use_cache=False`)
gives the same numbers, but as a dense T×T mask, which on CPU costs more than padding saves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftsafe_ray.finetune.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

ATTENTION = "ftsafe_packed_sdpa"
# One example: input_ids and labels (IGNORE_INDEX outside the assistant's replies).
Example = tuple[list[int], list[int]]
# An example of one group member (its index in the group).
MemberExample = tuple[int, Example]


@dataclass(frozen=True)
class PackedBatch:
    """One forward pass of whole examples end to end, each member's examples contiguous."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for each example
    bounds: torch.Tensor  # [examples + 1] cumulative example lengths (flash-attn's cu_seq_lens)
    targets: torch.Tensor  # [T] the next token each position predicts, IGNORE_INDEX where none
    spans: tuple[tuple[int, int, int], ...]  # (member, first token, end token) per member
    member_tokens: dict[int, int]  # tokens forwarded per member


def labelled_count(example: Example) -> int:
    """Positions whose next token is trained (what one example adds to its step's divisor)."""
    return sum(1 for label in example[1][1:] if label != IGNORE_INDEX)


def micro_batches(items: Sequence[MemberExample], budget: int) -> list[list[MemberExample]]:
    """Consecutive runs of whole examples of at most `budget` tokens (a longer example alone)."""
    chunks: list[list[MemberExample]] = []
    size = 0
    for item in items:
        length = len(item[1][0])
        if not chunks or size + length > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += length
    return chunks


def build_batch(items: Sequence[MemberExample], device: Any = None) -> PackedBatch:
    """Lay the examples (sorted by member) end to end as one packed row."""
    import torch

    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    lengths: list[int] = []
    spans: list[tuple[int, int, int]] = []
    member_tokens: dict[int, int] = {}
    for member, run in itertools.groupby(items, key=lambda item: item[0]):
        if member in member_tokens:
            raise ValueError(f"member {member}'s examples are not contiguous")
        start = len(ids)
        for _, (example_ids, labels) in run:
            ids += example_ids
            positions += range(len(example_ids))
            targets += [*labels[1 : len(example_ids)], IGNORE_INDEX]
            lengths.append(len(example_ids))
        spans.append((member, start, len(ids)))
        member_tokens[member] = len(ids) - start
    bounds = [0, *itertools.accumulate(lengths)]
    return PackedBatch(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        bounds=torch.tensor(bounds, dtype=torch.int32, device=device),
        targets=torch.tensor(targets, device=device),
        spans=tuple(spans),
        member_tokens=member_tokens,
    )


def member_loss_sums(model: Any, batch: PackedBatch, members: int) -> torch.Tensor:
    """Summed next-token cross-entropy over each member's labelled positions, shape [members].

    Logits are computed only where a label is trained: the loss is the same as over all
    positions, without the vocabulary-wide matmul and softmax for prompt tokens.
    """
    import torch
    import torch.nn.functional as F

    with packed_attention(model):
        hidden = model.get_decoder()(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            cu_seq_lens_q=batch.bounds,
            cu_seq_lens_k=batch.bounds,
            use_cache=False,
        ).last_hidden_state[0]
    selected = (batch.targets != IGNORE_INDEX).nonzero().squeeze(1)
    logits = model.get_output_embeddings()(hidden[selected]).float()
    losses = F.cross_entropy(logits, batch.targets[selected], reduction="none")
    owner = torch.empty_like(batch.targets)
    for member, start, end in batch.spans:
        owner[start:end] = member
    return losses.new_zeros(members).index_add(0, owner[selected], losses)


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Run the model's attention per packed example while the block lasts."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _packed_sdpa)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def _packed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, causal within each [bounds[i], bounds[i+1]) slice."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    # split, not slices: each slice's backward would zero-fill a full-size gradient
    outputs = [
        sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat(outputs, dim=1), None
