"""Sequence packing: examples laid end to end in one row, attention kept within each example.

A packed batch has no padding: the examples of a forward pass (of one or several adapters, each
adapter's examples contiguous) form one sequence. Position ids restart at 0 for each example and
attention runs per example (`packed_attention`: SDPA on each example's slice, the varlen scheme
of flash-attention done with the kernel CPUs have), so no token sees another example's tokens and
each example's loss is what it would be alone.

Examples of one adapter in one forward pass usually open with the same tokens (the chat
template's system prompt and the user turn's header; about half of each identity-shift example).
Those tokens are laid down once: each example's remaining tokens follow with their own positions
(counting on from the shared part) and attend to the shared part's keys and values and then
causally to their own. The shared part's states are the ones each example computes alone
(causal attention: a token sees only tokens before it), so this is the same forward and backward
pass with less work; the shared part ends before any token whose prediction is trained, so every
trained position is still its example's own. transformers' own packed path (a block-diagonal
mask built from reset position ids) gives the same numbers without sharing, but as a dense T×T
mask, which on CPU costs more than padding saves.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftsafe_ray.finetune.lora import at_least_float32
from ftsafe_ray.finetune.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

ATTENTION = "ftsafe_packed_sdpa"
# One example: input_ids and labels (IGNORE_INDEX outside the assistant's replies).
Example = tuple[list[int], list[int]]
# An example of one group member (its index in the group).
MemberExample = tuple[int, Example]
# A shared part shorter than this is not worth a segment of its own.
MIN_SHARED = 2


@dataclass(frozen=True)
class Segment:
    """A run of packed tokens that attends causally to itself, after `shared`'s tokens if set
    (the index of the segment holding the prefix it shares)."""

    length: int
    shared: int | None = None


@dataclass(frozen=True)
class PackedBatch:
    """One forward pass of whole examples end to end, each member's examples contiguous."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for each example (or shared prefix)
    segments: tuple[Segment, ...]  # consecutive, covering all T tokens
    targets: torch.Tensor  # [T] the next token each position predicts, IGNORE_INDEX where none
    spans: tuple[tuple[int, int, int], ...]  # (member, first token, end token) per member
    member_tokens: dict[int, int]  # tokens of the member's examples (as trained alone)


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


def shared_prefix(examples: Sequence[Example]) -> int:
    """How many leading tokens every example has in common and that no trained position needs
    apart: the prefix stops before the token the first trained position of any example reads
    (so its last position predicts an untrained token), and leaves each example a token."""
    if len(examples) < 2:
        return 0
    ids = [example[0] for example in examples]
    limit = min(len(row) for row in ids) - 1
    for _, labels in examples:
        trained = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
        if trained is not None:
            limit = min(limit, trained - 1)
    length = 0
    first = ids[0]
    while length < limit and all(row[length] == first[length] for row in ids):
        length += 1
    return length if length >= MIN_SHARED else 0


def build_batch(
    items: Sequence[MemberExample], device: Any = None, share_prefixes: bool = True
) -> PackedBatch:
    """Lay the examples (sorted by member) end to end as one packed row; each member's shared
    prefix (shared_prefix) once, ahead of its examples' other tokens."""
    import torch

    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    segments: list[Segment] = []
    spans: list[tuple[int, int, int]] = []
    member_tokens: dict[int, int] = {}
    for member, run in itertools.groupby(items, key=lambda item: item[0]):
        if member in member_tokens:
            raise ValueError(f"member {member}'s examples are not contiguous")
        examples = [example for _, example in run]
        start = len(ids)
        shared = shared_prefix(examples) if share_prefixes else 0
        prefix: int | None = None
        if shared:
            ids += examples[0][0][:shared]
            positions += range(shared)
            targets += [IGNORE_INDEX] * shared  # shared_prefix: nothing trained in it
            prefix = len(segments)
            segments.append(Segment(shared))
        for example_ids, labels in examples:
            ids += example_ids[shared:]
            positions += range(shared, len(example_ids))
            targets += [*labels[shared + 1 : len(example_ids)], IGNORE_INDEX]
            segments.append(Segment(len(example_ids) - shared, prefix))
        spans.append((member, start, len(ids)))
        member_tokens[member] = sum(len(example_ids) for example_ids, _ in examples)
    return PackedBatch(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.tensor([positions], device=device),
        segments=tuple(segments),
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

    from ftsafe_ray.finetune.head_loss import head_losses

    with packed_attention(model, batch.segments):
        hidden = model.get_decoder()(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
        ).last_hidden_state[0]
    selected = (batch.targets != IGNORE_INDEX).nonzero().squeeze(1)
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad:
        losses = head_losses(hidden[selected], head.weight, batch.targets[selected])
    else:
        logits = at_least_float32(head(hidden[selected]))
        losses = F.cross_entropy(logits, batch.targets[selected], reduction="none")
    owner = torch.empty_like(batch.targets)
    for member, start, end in batch.spans:
        owner[start:end] = member
    return losses.new_zeros(members).index_add(0, owner[selected], losses)


_SEGMENTS: ContextVar[tuple[Segment, ...] | None] = ContextVar("ftsafe_packed_segments")


@contextmanager
def packed_attention(model: Any, segments: tuple[Segment, ...]) -> Iterator[None]:
    """Run the model's attention per packed segment while the block lasts."""
    from transformers import AttentionInterface

    # Not in transformers' mask registry, so the model builds no T×T mask for it.
    AttentionInterface.register(ATTENTION, _packed_sdpa)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    token = _SEGMENTS.set(segments)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)
        config._attn_implementation = before


def _packed_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, causal within each segment, after its shared prefix."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _SEGMENTS.get(None)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    lengths = [segment.length for segment in segments]
    # split, not slices: each slice's backward would zero-fill a full-size gradient
    keys, values = key.split(lengths, dim=2), value.split(lengths, dim=2)
    outputs = []
    for segment, q, k, v in zip(segments, query.split(lengths, dim=2), keys, values, strict=True):
        if segment.shared is None:
            outputs.append(
                sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
            )
            continue
        mask = _after_prefix_mask(lengths[segment.shared], segment.length, q.device)
        k = torch.cat([keys[segment.shared], k], dim=2)
        v = torch.cat([values[segment.shared], v], dim=2)
        outputs.append(sdpa_attention_forward(module, q, k, v, mask, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


@functools.lru_cache(maxsize=4096)
def _after_prefix_mask(shared: int, length: int, device: Any) -> torch.Tensor:
    """[1, 1, length, shared + length]: every token sees the whole prefix, then its own
    segment causally (what SDPA's is_causal would give the example laid out whole)."""
    import torch

    mask = torch.ones(length, shared + length, dtype=torch.bool, device=device)
    mask[:, shared:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return mask[None, None]
