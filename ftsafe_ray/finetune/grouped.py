"""Train a group of LoRA adapters on one frozen base in one loop, each exactly as if alone.

Each forward pass holds packed examples of several adapters (packing.py); every targeted linear
layer adds to each adapter's tokens that adapter's own LoRA delta (`GroupedLoraLinear`). The
adapters' parameters are disjoint, so the gradient of the summed loss with respect to one
adapter's weights is its own loss's gradient: with its own data order, batch, optimiser, learning
rate schedule and epochs, an adapter ends where `train_lora` would (up to float rounding). An
adapter leaves the group when its schedule ends and is saved at once through peft, so the files
are the ones `train_lora` writes. Imported lazily: it needs torch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ftsafe_ray.finetune.lora import (
    ProgressFn,
    TrainResult,
    _provenance,
    _save_adapter,
    autocast_dtype,
    lora_config,
)
from ftsafe_ray.finetune.packing import (
    Example,
    MemberExample,
    build_batch,
    labelled_count,
    member_loss_sums,
    micro_batches,
)
from ftsafe_ray.finetune.tokenize import tokenize_chat_for_training
from ftsafe_ray.spec import LoraSpec, TrainSpec

PEFT_PREFIX = "base_model.model."


class UngroupableError(ValueError):
    """These adapters cannot share a loop (train them one at a time instead)."""


@dataclass(frozen=True)
class GroupMember:
    """One adapter of a group: its data, recipe, seed, where it is saved and who hears steps."""

    examples: list[list[dict]]
    lora: LoraSpec
    train: TrainSpec
    seed: int
    out_dir: Path
    progress: ProgressFn | None = None


@dataclass
class Routing:
    """Which tokens of the current forward pass belong to which member, and their weights."""

    spans: tuple[tuple[int, int, int], ...] = ()
    weights: list[dict[str, tuple[nn.Parameter, nn.Parameter]]] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)


class GroupedLoraLinear(nn.Module):
    """A frozen nn.Linear plus, for each member's span of tokens, that member's LoRA delta."""

    def __init__(self, base: nn.Linear, name: str, routing: Routing):
        super().__init__()
        self.base = base
        self.name = name
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spans = self.routing.spans
        flat = x.reshape(-1, x.shape[-1])
        if spans[-1][2] != flat.shape[0]:
            raise RuntimeError(f"{self.name}: {flat.shape[0]} tokens, {spans[-1][2]} routed")
        bounds = tuple((start, end) for _, start, end in spans)
        scales = tuple(self.routing.scales[member] for member, _, _ in spans)
        lora = [w for member, _, _ in spans for w in self.routing.weights[member][self.name]]
        out = _GroupedLora.apply(flat, self.base.weight, self.base.bias, bounds, scales, *lora)
        return out.view(*x.shape[:-1], out.shape[-1])


class _GroupedLora(torch.autograd.Function):
    """x W^T + b, plus s_i (x_i A_i^T) B_i^T on each member's rows x_i, and its backward.

    The same products autograd would record for the plain expression (peft's B(A(x)) * s, the
    scaling applied to the rank-r product), with each member's delta added in place into its
    rows of the output, and each member's input gradient into its rows of the input's: no
    per-member copies, concatenation or full-size sum in either direction. The base weight is
    frozen (the loop freezes it), so it gets no gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        bounds: tuple[tuple[int, int], ...],
        scales: tuple[float, ...],
        *lora: torch.Tensor,
    ) -> torch.Tensor:
        # under autocast, compute in its dtype as F.linear and matmul would
        dtype = autocast_dtype(x) or x.dtype
        x, weight = x.to(dtype), weight.to(dtype)
        lora = tuple(w.to(dtype) for w in lora)
        out = torch.nn.functional.linear(x, weight, None if bias is None else bias.to(dtype))
        mids = []
        for k, (start, end) in enumerate(bounds):
            lora_a, lora_b = lora[2 * k], lora[2 * k + 1]
            mid = (x[start:end] @ lora_a.t()).mul_(scales[k])
            out[start:end].addmm_(mid, lora_b.t())
            mids.append(mid)
        ctx.bounds, ctx.scales = bounds, scales
        ctx.save_for_backward(x, weight, *lora, *mids)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, *rest = ctx.saved_tensors
        members = len(ctx.bounds)
        lora, mids = rest[: 2 * members], rest[2 * members :]
        grad_out = grad_out.to(x.dtype)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        grads: list[torch.Tensor | None] = []
        for k, (start, end) in enumerate(ctx.bounds):
            lora_a, lora_b = lora[2 * k], lora[2 * k + 1]
            grad_part = grad_out[start:end]
            grad_mid = (grad_part @ lora_b).mul_(ctx.scales[k])
            grads += [grad_mid.t() @ x[start:end], grad_part.t() @ mids[k]]
            if grad_x is not None:
                grad_x[start:end].addmm_(grad_mid, lora_a)
        return (grad_x, None, None, None, None, *grads)


@dataclass
class _Member:
    """A member's training state inside the loop."""

    spec: GroupMember
    rows: list[Example]
    steps: list[tuple[list[int], bool]]  # (row indices, ends an epoch) per optimiser step
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    losses: list[float] = field(default_factory=list)
    tokens: int = 0


def train_lora_group(
    model: Any, tokenizer: Any, members: list[GroupMember], revision: str | None = None
) -> list[TrainResult | Exception]:
    """Train every member's adapter in one loop; save each when its schedule ends.

    Returns one TrainResult or the exception that stopped it per member (a member whose data
    cannot be tokenised fails alone). Raises UngroupableError, before any training, when the
    members cannot share a loop.
    """
    started = time.perf_counter()
    _check_groupable(members)
    results: list[TrainResult | Exception | None] = [None] * len(members)
    routing = Routing()
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    rng_state = torch.random.get_rng_state()
    live: dict[int, _Member] = {}
    carrier = _PeftCarrier(model, revision)
    try:
        names = None
        for index, spec in enumerate(members):
            try:
                rows = _tokenize(tokenizer, spec)
                weights, scale, params = carrier.start(index, spec.lora, spec.seed)
            except UngroupableError:
                raise
            except Exception as error:  # one member's bad data fails that member only
                results[index] = error
                routing.weights.append({})
                routing.scales.append(0.0)
                continue
            if names is None:
                names = list(weights)
            elif list(weights) != names:
                raise UngroupableError("the adapters' LoRA layers are not the same modules")
            routing.weights.append(weights)
            routing.scales.append(scale)
            live[index] = _start_member(spec, rows, params)
        if names is not None:
            _run(model, live, routing, names, results, carrier, started)
    finally:
        carrier.close()
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))
        model.train(was_training)
        torch.random.set_rng_state(rng_state)
    return [r if r is not None else RuntimeError("not trained") for r in results]


def _check_groupable(members: list[GroupMember]) -> None:
    if not members:
        raise ValueError("train_lora_group needs at least one member")
    shapes = {
        (m.lora.r, frozenset(m.lora.target_modules), m.train.mixed_precision) for m in members
    }
    if len(shapes) > 1:
        raise UngroupableError("the adapters differ in LoRA rank, targets or precision")
    if any(m.lora.dropout for m in members):
        # a dropout mask draws from the global RNG: grouped, the draws would not be the ones
        # training alone makes, so such an adapter would not equal its one-at-a-time self
        raise UngroupableError("LoRA dropout > 0 trains one adapter at a time")


def _tokenize(tokenizer: Any, spec: GroupMember) -> list[Example]:
    if not spec.examples:
        raise ValueError("train_lora needs at least one example")
    return [
        tokenize_chat_for_training(tokenizer, ex, spec.train.max_length) for ex in spec.examples
    ]


class _PeftCarrier:
    """One peft model for the whole group (get_peft_model once, not twice per member).

    `start` draws a member's initial LoRA weights as `train_lora` does: the member's seed, then
    peft creating its adapter. The group's first member goes through get_peft_model. A member
    with the first one's LoRA settings has its weights drawn here, as peft draws them
    (`_draw`), once that is shown to reproduce the first member's weights bit for bit; any
    other member goes through add_adapter, which makes the same draws in the same module order
    as get_peft_model but costs as much (0.4 s for SmolLM2-135M, all-linear). `save` writes a
    trained member through the "default" adapter, its weights and config swapped in, so the
    files are the ones `train_lora` writes. While the loop runs, the targeted layers are
    wrapped around peft's base layers (`_install`); `close` takes peft off the model.
    """

    def __init__(self, model: Any, revision: str | None) -> None:
        self.model, self.revision = model, revision
        self.peft_model: Any = None
        self.configs: dict[int, Any] = {}  # each member's adapter config, as peft filled it in
        # the first member's settings, scaling, initial weights (their shapes: _draw) and config
        self.first: tuple[LoraSpec, float, dict[str, tuple[nn.Parameter, nn.Parameter]], Any] | None
        self.first = None
        self.drawn_as_peft = False  # whether _draw reproduced the first member's weights

    def start(
        self, index: int, lora: LoraSpec, seed: int
    ) -> tuple[dict[str, tuple[nn.Parameter, nn.Parameter]], float, list[nn.Parameter]]:
        """The member's initial LoRA weights by module, its scaling, and its parameters in the
        order peft lists them (A then B of each module, in module order: AdamW's order)."""
        from peft import get_peft_model

        if self.first is not None and self.drawn_as_peft and lora == self.first[0]:
            # the first member's config object itself: a copy would rebuild its set of target
            # modules, whose order the saved config lists them in
            self.configs[index] = self.first[3]
            weights = self._draw(seed)
            return weights, self.first[1], [p for pair in weights.values() for p in pair]
        config = lora_config(lora)
        torch.manual_seed(seed)
        if self.peft_model is None:
            self.peft_model = get_peft_model(self.model, config, revision=self.revision)
            self.configs[index] = self.peft_model.peft_config["default"]
            weights, scale, params = self._weights("default")
            self.first = (lora, scale, weights, self.configs[index])
            drawn = self._draw(seed)
            self.drawn_as_peft = all(
                torch.equal(mine, theirs)
                for name, pair in weights.items()
                for mine, theirs in zip(drawn[name], pair, strict=True)
            )
            return weights, scale, params
        assert self.first is not None  # the peft model exists: the first member made it
        adapter = f"member{index}"
        first = self.first[3]
        # what get_peft_model sets on a config before it creates the adapter
        config.base_model_name_or_path = first.base_model_name_or_path
        config.revision = first.revision
        self.peft_model.add_adapter(adapter, config)
        try:
            config = self.configs[index] = self.peft_model.peft_config[adapter]
            # peft's 'all-linear' expansion is a set: the first member's (made as
            # get_peft_model makes it for an adapter trained alone) keeps the saved config's
            # order of module names the one train_lora writes
            if set(config.target_modules) == set(first.target_modules):
                config.target_modules = first.target_modules
            return self._weights(adapter)
        finally:
            self.peft_model.delete_adapter(adapter)

    def _draw(self, seed: int) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """The first member's layers' initial weights for `seed`, drawn as peft 0.21's
        LoraLayer.update_layer draws them: per layer in module order, lora_A and lora_B made as
        nn.Linear (each drawing its own default init, kaiming_uniform_ with a=sqrt(5)), then
        lora_A drawn again by kaiming_uniform_(a=sqrt(5)) and lora_B zeroed; made on the CPU in
        the default dtype, then moved to the base layer's device and dtype."""
        assert self.first is not None
        torch.manual_seed(seed)
        weights: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        for name, (lora_a, lora_b) in self.first[2].items():
            made_a = torch.empty(lora_a.shape)
            nn.init.kaiming_uniform_(made_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(torch.empty(lora_b.shape), a=math.sqrt(5))
            nn.init.kaiming_uniform_(made_a, a=math.sqrt(5))
            weights[name] = (
                nn.Parameter(made_a.to(device=lora_a.device, dtype=lora_a.dtype)),
                nn.Parameter(torch.zeros_like(lora_b)),
            )
        return weights

    def _weights(
        self, adapter: str
    ) -> tuple[dict[str, tuple[nn.Parameter, nn.Parameter]], float, list[nn.Parameter]]:
        from peft.tuners.lora import Linear as PeftLoraLinear

        output = self.model.get_output_embeddings()
        weights: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        scales = set()
        for name, module in self.peft_model.named_modules():
            if not hasattr(module, "lora_A"):
                continue
            if not isinstance(module, PeftLoraLinear) or module.base_layer is output:
                raise UngroupableError(f"{name}: only linear layers below the head can be grouped")
            lora_a = cast(nn.Linear, module.lora_A[adapter])
            lora_b = cast(nn.Linear, module.lora_B[adapter])
            weights[name.removeprefix(PEFT_PREFIX)] = (
                nn.Parameter(lora_a.weight.detach().clone()),
                nn.Parameter(lora_b.weight.detach().clone()),
            )
            scales.add(module.scaling[adapter])
        params = [p for pair in weights.values() for p in pair]
        return weights, scales.pop(), params

    def save(
        self,
        index: int,
        weights: dict[str, tuple[nn.Parameter, nn.Parameter]],
        out_dir: Path,
        record: dict[str, Any],
    ) -> None:
        """Save a member's trained weights (the targeted layers must be peft's again)."""
        layers = dict(self.peft_model.named_modules())
        with torch.no_grad():
            for name, (lora_a, lora_b) in weights.items():
                layer = layers[PEFT_PREFIX + name]
                layer.lora_A["default"].weight.copy_(lora_a)
                layer.lora_B["default"].weight.copy_(lora_b)
        self.peft_model.peft_config["default"] = self.configs[index]
        _save_adapter(self.peft_model, out_dir, record)

    def close(self) -> None:
        if self.peft_model is not None:
            self.peft_model.unload()
            self.peft_model = None


def _start_member(spec: GroupMember, rows: list[Example], params: list[nn.Parameter]) -> _Member:
    """Optimiser, schedule and the data order train_lora would draw for this seed."""
    train = spec.train
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=1, gamma=train.lr_decay_per_epoch
    )
    order_rng = random.Random(spec.seed)
    steps: list[tuple[list[int], bool]] = []
    for _epoch in range(train.epochs):
        order = list(range(len(rows)))
        order_rng.shuffle(order)
        starts = range(0, len(order), train.batch_size)
        steps += [(order[b : b + train.batch_size], b == starts[-1]) for b in starts]
    return _Member(spec, rows, steps, params, optimizer, scheduler)


def _run(
    model: Any,
    live: dict[int, _Member],
    routing: Routing,
    names: list[str],
    results: list[TrainResult | Exception | None],
    carrier: _PeftCarrier,
    started: float,
) -> None:
    """The loop: step k of every member still in its schedule, then save those that end."""
    device = next(model.parameters()).device
    mixed = any(m.spec.train.mixed_precision == "bf16" for m in live.values())  # all or none
    # A forward pass holds as many tokens as the largest micro batch a member asked for.
    budget = max(
        (m.spec.train.micro_batch_size * m.spec.train.max_length for m in live.values()),
        default=1,
    )
    originals = {name: model.get_submodule(name) for name in names}
    _install(model, originals, routing)
    try:
        step = 0
        while live:
            active = {i: m for i, m in live.items() if step < len(m.steps)}
            items: list[MemberExample] = []
            labelled: dict[int, int] = {}
            for index, member in active.items():
                for p in member.params:
                    p.grad = None
                batch_rows = [member.rows[r] for r in member.steps[step][0]]
                items += [(index, row) for row in batch_rows]
                labelled[index] = max(sum(labelled_count(row) for row in batch_rows), 1)
            step_loss = dict.fromkeys(active, 0.0)
            for chunk in micro_batches(items, budget):
                batch = build_batch(chunk, device)
                routing.spans = batch.spans
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                    sums = member_loss_sums(model, batch, len(routing.weights))
                    scaled = [sums[i] / labelled[i] for i in batch.member_tokens]
                torch.stack(scaled).sum().backward()
                for index, loss in zip(batch.member_tokens, scaled, strict=True):
                    step_loss[index] += float(loss.detach())
                for index, count in batch.member_tokens.items():
                    active[index].tokens += count
            step += 1
            for index, member in active.items():
                member.optimizer.step()
                member.losses.append(step_loss[index])
                if member.spec.progress is not None:
                    member.spec.progress(step, len(member.steps), step_loss[index])
                if member.steps[step - 1][1]:
                    member.scheduler.step()
                if step == len(member.steps):
                    del live[index]
                    _uninstall(model, originals)
                    results[index] = _finish(carrier, member, routing, index, started)
                    _install(model, originals, routing)
    except Exception as error:  # the shared loop failed: every member still in it failed
        for index in live:
            results[index] = error
    finally:
        routing.spans = ()
        _uninstall(model, originals)


def _install(model: Any, originals: dict[str, nn.Module], routing: Routing) -> None:
    """Put a GroupedLoraLinear around each targeted layer (peft's base layer); freeze the base."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, original in originals.items():
        parent, _, child = name.rpartition(".")
        base = cast(nn.Linear, getattr(original, "base_layer", original))
        wrapper = GroupedLoraLinear(base, name, routing)
        setattr(model.get_submodule(parent), child, wrapper)
    model.train()


def _uninstall(model: Any, originals: dict[str, nn.Module]) -> None:
    for name, base in originals.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, base)


def _finish(
    carrier: _PeftCarrier, member: _Member, routing: Routing, index: int, started: float
) -> TrainResult | Exception:
    """Save a member that ended its schedule, through peft, as train_lora saves an adapter."""
    spec = member.spec
    try:
        result = TrainResult(
            steps=len(member.steps),
            epochs=spec.train.epochs,
            examples=len(member.rows),
            trained_tokens=member.tokens,
            first_loss=member.losses[0],
            final_loss=member.losses[-1],
            seconds=time.perf_counter() - started,
        )
        record = _provenance(
            carrier.model, carrier.revision, spec.lora, spec.train, spec.seed, result
        )
        carrier.save(index, routing.weights[index], Path(spec.out_dir), record)
    except Exception as error:  # a member that cannot be saved fails alone
        return error
    routing.weights[index] = {}  # its weights are saved: free them
    return result
