"""R ConvNets as one network with R times the channels, and the loop that trains them.

The R models (seeds of one candidate, or candidates of one :func:`group_key`) are each built by
``build_model(spec, seed=s)`` as in the plain loop, then their tensors are concatenated: conv ``k``
becomes a grouped conv (``groups=R``), BatchNorm / InstanceNorm / GroupNorm act per channel (or per
group) and so stay per model, LayerNorm and the head are batched per model. The loss is the sum of
the R mean losses, so each model's gradient is its own; SGD is elementwise, so SGD on the stacked
tensors is R independent SGDs. One Python step trains R models: this wins where a step is
overhead-bound (narrow nets, GPUs). Candidates of one group stack the same way with their own norms
and activations: where models differ, each run of equal layers acts on its own channel blocks.

Equality with the loop (:mod:`nas_proxy.train`): same initial weights (same ``build_model``
seeds), same batch order (the same seeded ``randperm``), same learning-rate schedule. One model in
the stacked code runs the loop's own kernels on the loop's own batches, so on a CPU it is
bit-identical to ``train_model`` (tests/test_stacked.py checks every layer type). Several models in
one network change the summation order of the grouped convs and the batched head, and on a CPU each
group norm -> (leaky) ReLU -> average pooling block runs as one fused kernel
(:func:`nas_proxy.kernels.norm_act_pool`, as exact as PyTorch's three kernels). Such a training run
is chaotic, so stacked results agree with the loop's to float tolerance: test accuracies within a
few tenths of a point (benchmarks/train_batched.py measures it).

Which runs stack, and when, is the execution plan's decision (:mod:`nas_proxy.plan`); this module
is the mechanism.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy import kernels
from nas_proxy.data import Split
from nas_proxy.device import on_cpu, on_cuda
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.microbatch import micro_batch_size, splittable
from nas_proxy.models import ConvNet, blocks, build_model, count_params
from nas_proxy.space import ArchSpec
from nas_proxy.train import RunOutcome, TrainConfig, TrainStats, curve_point, eval_batch_size


@dataclass(frozen=True)
class FastOptions:
    """Speed switches of the stacked path; all off by default, all harmless on CPU.

    ``channels_last``: NHWC memory format for the stacked activations (helps cuDNN; mixed on CPU).
    ``bf16``: bfloat16 autocast of the forward pass; changes results beyond float tolerance, so it
    is off unless asked for (CUDA only; ignored on CPU). ``compile``: ``None``, ``"default"`` or
    ``"reduce-overhead"`` (the latter uses CUDA graphs on a GPU): the stacked step goes through
    ``torch.compile``. On this project's CPU a compile costs tens of seconds per candidate, more
    than 100 steps of a small net, so it is a GPU option.
    """

    channels_last: bool = False
    bf16: bool = False
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile not in (None, *COMPILE_MODES):
            raise UnknownNameError("compile mode", self.compile, COMPILE_MODES)

    @property
    def text(self) -> str:
        """The form :meth:`parse` reads, e.g. ``channels_last,bf16,compile=reduce-overhead`` (``none``: all off)."""
        parts = [name for name in ("channels_last", "bf16") if getattr(self, name)]
        parts += [f"compile={self.compile}"] if self.compile else []
        return ",".join(parts) or "none"

    @classmethod
    def parse(cls, text: str) -> FastOptions:
        """Options from a comma list (``parse(o.text) == o``); an unknown item raises naming the valid ones."""
        fields: dict[str, Any] = {}
        for item in (t.strip() for t in text.split(",")):
            name, eq, value = item.partition("=")
            if item == "none":
                continue
            if name in ("channels_last", "bf16") and not eq:
                fields[name] = True
            elif name == "compile":
                fields["compile"] = value if eq else "default"
            else:
                raise UnknownNameError("fast option", item, ["channels_last", "bf16", "compile[=MODE]", "none"])
        return cls(**fields)


COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")


# ----------------------------------------------------------------------------- the stacked network


def _activation(m: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], float | None] | None:
    """An activation module's function and negative slope (None for sigmoid: such a block cannot
    run as the fused norm -> (leaky) ReLU -> pooling kernel); None if ``m`` is no activation."""
    if isinstance(m, nn.ReLU):
        return F.relu, 0.0
    if isinstance(m, nn.LeakyReLU):
        slope = float(m.negative_slope)
        return functools.partial(F.leaky_relu, negative_slope=slope), slope
    if isinstance(m, nn.Sigmoid):
        return torch.sigmoid, None
    return None


@dataclass
class _Layer:
    """One run of identical layers of consecutive models: a kind, its stacked tensors, fixed settings."""

    kind: str  # conv | bn | gn | ln | act | maxpool | avgpool | identity
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any]


@dataclass(frozen=True)
class _Segment:
    """The modules of consecutive models at one row that are equal layers, and their stacked layer."""

    owners: tuple[nn.Module, ...]
    layer: _Layer

    @property
    def size(self) -> int:
        return len(self.owners)


def group_key(spec: ArchSpec) -> tuple[int, int, str]:
    """Architectures with equal keys (depth, width, pooling) can train as one stacked network.

    Their convolutions, pooling and head have the same shapes, so they stack as for seeds of one
    candidate; norms and activations may differ, and each model gets its own (see ``StackedConvNets``).
    """
    return (spec.depth, spec.width, spec.pool)


def _affine(mods: Sequence[Any], join: Callable[[Any], torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"weight": join(m.weight for m in mods), "bias": join(m.bias for m in mods)}


def _layer_of(mods: Sequence[nn.Module]) -> _Layer:
    """The stacked layer of modules of one kind and setting (one module per model)."""
    first = mods[0]
    if isinstance(first, nn.Conv2d):
        return _Layer(
            "conv",
            _affine(mods, _cat),
            {"padding": first.padding, "in_channels": first.in_channels},
        )
    if isinstance(first, nn.BatchNorm2d):
        return _Layer(
            "bn",
            {
                **_affine(mods, _cat),
                "running_mean": _cat((m.running_mean for m in mods), grad=False),
                "running_var": _cat((m.running_var for m in mods), grad=False),
            },
            {"momentum": first.momentum, "eps": first.eps},
        )
    if isinstance(first, nn.GroupNorm):
        return _Layer(
            "gn",
            _affine(mods, _cat),
            {"groups": first.num_groups, "eps": first.eps},
        )
    if isinstance(first, nn.LayerNorm):
        return _Layer(
            "ln",
            _affine(mods, _stack),
            {"shape": tuple(first.normalized_shape), "eps": first.eps},
        )
    act = _activation(first)
    if act is not None:
        return _Layer("act", {}, {"fn": act[0], "slope": act[1]})
    if isinstance(first, nn.MaxPool2d | nn.AvgPool2d):
        return _Layer("maxpool" if isinstance(first, nn.MaxPool2d) else "avgpool", {}, {})
    if isinstance(first, nn.Identity):
        return _Layer("identity", {}, {})
    # A new layer type in models.py must be taught here, not silently skipped.
    raise NasProxyError(f"stacked training does not know layer {type(first).__name__}")


def _signature(m: nn.Module) -> tuple[Any, ...]:
    """What must agree for two models' layers to be one stacked layer (their type and settings)."""
    if isinstance(m, nn.GroupNorm):
        return (nn.GroupNorm, m.num_groups, m.eps)
    if isinstance(m, nn.BatchNorm2d):
        return (nn.BatchNorm2d, m.momentum, m.eps)
    if isinstance(m, nn.LayerNorm):
        return (nn.LayerNorm, tuple(m.normalized_shape), m.eps)
    if isinstance(m, nn.LeakyReLU):
        return (nn.LeakyReLU, m.negative_slope)
    return (type(m),)


def _segments(mods: Sequence[nn.Module]) -> list[_Segment]:
    """One row of layers (one module per model) as runs of consecutive models with equal layers."""
    out: list[_Segment] = []
    start = 0
    for i in range(1, len(mods) + 1):
        if i == len(mods) or _signature(mods[i]) != _signature(mods[start]):
            out.append(_Segment(tuple(mods[start:i]), _layer_of(mods[start:i])))
            start = i
    return out


def _apply(layer: _Layer, x: torch.Tensor, r: int, *, training: bool, grouped: bool) -> torch.Tensor:
    """``layer`` of ``r`` models on their channel blocks ``x`` (N, r*C, H, W)."""
    t, s = layer.tensors, layer.settings
    if layer.kind == "conv":
        return F.conv2d(x, t["weight"], t["bias"], padding=s["padding"], groups=r if grouped else 1)
    if layer.kind == "bn":
        return F.batch_norm(
            x,
            t["running_mean"],
            t["running_var"],
            t["weight"],
            t["bias"],
            training=training,
            momentum=s["momentum"],
            eps=s["eps"],
        )
    if layer.kind == "gn":
        return F.group_norm(x, s["groups"] * r, t["weight"], t["bias"], s["eps"])
    if layer.kind == "ln" and r == 1:  # the fused native kernel, on views of the stacked affine
        return F.layer_norm(x, s["shape"], t["weight"][0], t["bias"][0], s["eps"])
    if layer.kind == "ln":
        n, (c, h, w) = x.shape[0], s["shape"]
        y = F.layer_norm(x.reshape(n, r, c, h, w), (c, h, w), eps=s["eps"])
        return torch.addcmul(t["bias"], y, t["weight"]).reshape(n, r * c, h, w)
    if layer.kind == "act":
        out: torch.Tensor = s["fn"](x)
        return out
    if layer.kind == "maxpool":
        return F.max_pool2d(x, 2, 2)
    if layer.kind == "avgpool":
        return kernels.avg_pool_2x2(x)
    return x  # identity


class StackedConvNets:
    """R ConvNets of one group as one network with R times the channels (see the module docstring).

    The models share :func:`group_key` (depth, width, pooling): seeds of one candidate, or several
    candidates. A row of layers where models differ (their norms or activations) is a list of
    segments, runs of consecutive models with the same layer, each applied to its channel blocks
    (order the models by norm and activation to keep the runs few). Built from the R ``ConvNet``
    modules (so initial weights are exactly theirs); ``write_back`` copies the trained tensors
    into those modules again.
    """

    def __init__(self, models: Sequence[ConvNet]) -> None:
        if not models:
            raise NasProxyError("need at least one model to stack")
        keys = {(group_key(m.spec), m.feature_shape, getattr(m.features[0], "in_channels", None)) for m in models}
        if len(keys) > 1:
            ids = ", ".join(dict.fromkeys(m.spec.id for m in models))
            raise NasProxyError(
                f"models of different depth, width, pooling or input cannot train as one stacked network: {ids}"
            )
        self.models = list(models)
        self.r = len(models)
        self.rows: list[list[_Segment]] = []
        for mods in zip(*(m.features for m in models), strict=True):
            if not all(isinstance(m, nn.Identity) for m in mods):  # a row of no-ops needs no layer
                self.rows.append(_segments(mods))
        # Rows that start a group norm -> (leaky) ReLU -> average pooling block shared by all models:
        # on a CPU such a block runs as one fused kernel (nas_proxy.kernels.norm_act_pool).
        self.fusable_rows = {
            i
            for i in range(len(self.rows) - 2)
            if all(len(row) == 1 for row in self.rows[i : i + 3])
            and [row[0].layer.kind for row in self.rows[i : i + 3]] == ["gn", "act", "avgpool"]
            and self.rows[i + 1][0].layer.settings["slope"] is not None
        }
        self.head_weight = _stack(m.classifier.weight for m in models)  # (R, K, F)
        self.head_bias = _stack(m.classifier.bias for m in models)  # (R, K)

    def parameters(self) -> list[torch.Tensor]:
        """The trainable stacked tensors (leaves with ``requires_grad``)."""
        params = [
            t for row in self.rows for seg in row for k, t in seg.layer.tensors.items() if not k.startswith("running")
        ]
        return [*params, self.head_weight, self.head_bias]

    def forward(self, x: torch.Tensor, *, training: bool, channels_last: bool = False) -> torch.Tensor:
        """Logits (R, N, K). ``x`` is shared (N, C, H, W) or per model (R, N, C, H, W)."""
        r = self.r
        shared = x.ndim == 4
        n = x.shape[0] if shared else x.shape[1]
        if not shared:  # per-model batches become channel blocks: (N, R*C, H, W)
            x = x.transpose(0, 1).reshape(n, -1, *x.shape[-2:])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        first_conv = True
        # One model keeps PyTorch's own kernels: bit for bit the plain loop. Several fuse where they can.
        fuse = r > 1 and not channels_last
        i = 0
        while i < len(self.rows):
            if fuse and i in self.fusable_rows and kernels.supports(x):
                x = self._norm_act_pool(i, x)
                i += 3
                continue
            row = self.rows[i]
            i += 1
            if len(row) == 1:
                layer = row[0].layer
                # A shared input feeds every model: one plain conv with R*W outputs; else grouped.
                x = _apply(layer, x, r, training=training, grouped=not (first_conv and shared))
                first_conv = first_conv and layer.kind != "conv"
                continue
            # Models differ here (a norm or an activation, never a conv): each run on its channels.
            block = x.shape[1] // r
            parts = torch.split(x, [seg.size * block for seg in row], dim=1)
            x = torch.cat(
                [
                    _apply(seg.layer, part, seg.size, training=training, grouped=True)
                    for seg, part in zip(row, parts, strict=True)
                ],
                dim=1,
            )
        if r == 1:  # nn.Linear's own kernel: bit-identical to the plain loop (a bmm head drifts 1e-2 in 100 steps)
            return F.linear(x.reshape(n, -1), self.head_weight[0], self.head_bias[0]).unsqueeze(0)
        feats = x.reshape(n, r, -1).transpose(0, 1)  # (R, N, F): each model's flatten order
        return torch.baddbmm(self.head_bias.unsqueeze(1), feats, self.head_weight.transpose(1, 2))

    def _norm_act_pool(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Rows i..i+2 (group norm, (leaky) ReLU, average pooling) as one fused CPU kernel."""
        norm, act = self.rows[i][0].layer, self.rows[i + 1][0].layer
        groups = norm.settings["groups"] * self.r
        weight, bias = norm.tensors["weight"], norm.tensors["bias"]
        return kernels.norm_act_pool(x, weight, bias, groups, norm.settings["eps"], act.settings["slope"])

    @torch.no_grad()
    def write_back(self) -> list[ConvNet]:
        """Copy the stacked tensors into the R original modules and return them."""
        for seg in (seg for row in self.rows for seg in row):
            layer = seg.layer
            for name, stacked in layer.tensors.items():
                # LayerNorm and head tensors were stacked on a new dim; the rest concatenated.
                parts = stacked.unbind(0) if layer.kind == "ln" else stacked.chunk(seg.size, dim=0)
                for m, part in zip(seg.owners, parts, strict=True):
                    getattr(m, name).copy_(part)
            if layer.kind == "bn":
                for m in seg.owners:
                    if isinstance(m, nn.BatchNorm2d) and m.num_batches_tracked is not None:
                        m.num_batches_tracked.add_(self.steps_done - self._steps_written)
        for m, w, b in zip(self.models, self.head_weight, self.head_bias, strict=True):
            m.classifier.weight.copy_(w)
            m.classifier.bias.copy_(b)
        self._steps_written = self.steps_done  # a second write-back (once an epoch) counts each step once
        return self.models

    steps_done: int = 0
    _steps_written: int = 0


def _cat(tensors: Any, grad: bool = True) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors]).requires_grad_(grad)


def _stack(tensors: Any) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).requires_grad_(True)



# ----------------------------------------------------------------------------- training

def train_stacked(
    models: Sequence[ConvNet],
    train: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    options: FastOptions | None = None,
    on_epoch: Callable[[int, StackedConvNets], None] | None = None,
    on_record: Callable[[int, StackedConvNets, list[float]], None] | None = None,
    micro_batch_bytes: int | None = None,
) -> tuple[StackedConvNets, list[TrainStats]]:
    """Train ``models`` (one :func:`group_key`, on ``train``'s device) in place as one stacked network.

    ``train_model(models[i], train, config, seeds[i])`` for every i, to float tolerance (one model
    on a CPU: bit for bit): the same batch order (each seed's own ``randperm``), learning-rate
    schedule and divergence rule. ``on_epoch(epoch, net)`` runs after every epoch (and may raise,
    as an Optuna pruner does). ``on_record(step, net, losses)`` runs after each of
    ``config.record_steps`` (learning-curve points) with each model's mean training loss since the
    previous point. ``micro_batch_bytes``: the micro-batch budget on a CPU (see
    :func:`nas_proxy.microbatch.micro_batch_size`). Returns the stacked network (for
    :func:`stacked_accuracy`) and each model's stats.
    """
    options = options or FastOptions()
    if len(models) != len(seeds):
        raise NasProxyError(f"{len(models)} models but {len(seeds)} seeds")
    start = time.perf_counter()
    device = train.device
    net = StackedConvNets(models)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    r, n = len(models), len(train)
    total = config.total_steps(n)
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # each seed's batch order, as in train_model
    full_batch = config.batch_size >= n
    autocast = options.bf16 and on_cuda(device)

    def losses_of(x: torch.Tensor, y: torch.Tensor, divide_by: int | None = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = net.forward(x, training=True, channels_last=options.channels_last)
        # Per-model mean cross-entropy, (R,); their sum gives each model its own gradient. A
        # micro-batch's loss is its sum over the whole batch's size: the pieces add up to the mean.
        per = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return per.reshape(r, -1).mean(1) if divide_by is None else per.reshape(r, -1).sum(1) / divide_by

    step_fn = torch.compile(losses_of, mode=options.compile) if options.compile else losses_of
    # On a CPU, micro-batches as train_model's (same pieces for one model, so the same numbers).
    split = all(splittable(m.spec) for m in models)
    # Divergence is tracked on the device (no host sync inside the loop): the step count at the end
    # of the epoch in which a model's loss first turned non-finite. Such a model goes on computing
    # garbage in its own channels, which touch no other model, and is reported as diverged.
    stopped_at = torch.full((r,), -1, dtype=torch.long, device=device)
    last = torch.zeros(r, device=device)
    # A CPU loses nothing by looking at the loss once an epoch; a GPU looks only when asked to.
    check_each_epoch = on_epoch is not None or on_cpu(device)
    points = set(config.record_steps(n)) if on_record is not None else set()
    since, since_steps = torch.zeros(r, device=device), 0
    step, epoch = 0, 0
    while step < total:
        orders = [torch.randperm(n, generator=g) for g in gens]
        epoch_loss = torch.zeros(r, device=device)
        for i in range(0, n, config.batch_size):
            lr = config.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            if r == 1:
                # One model: exactly the plain loop's batch (same order too), so the same numbers.
                idx = orders[0][i : i + config.batch_size].to(device, non_blocking=True)
                x, y = train.images[idx], train.labels[idx].unsqueeze(0)
            elif full_batch:
                # The whole set is every model's batch: the mean loss and BatchNorm's batch statistics
                # do not depend on the order inside it, so all models share one input (no gather).
                x, y = train.images, train.labels.expand(r, n)
            else:
                idx = torch.stack([o[i : i + config.batch_size] for o in orders]).to(device, non_blocking=True)
                x, y = train.images[idx], train.labels[idx]
            b = y.shape[1]
            micro = (
                micro_batch_size(models[0].spec, train.images.shape, b, device, models=r, budget=micro_batch_bytes)
                if split
                else b
            )
            opt.zero_grad(set_to_none=True)
            if micro >= b:
                losses = step_fn(x, y)
                losses.sum().backward()  # type: ignore[no-untyped-call]
                losses = losses.detach()
            else:
                losses = torch.zeros(r, device=device)
                for start in range(0, b, micro):
                    part = slice(start, start + micro)
                    piece = step_fn(x[:, part] if x.dim() == 5 else x[part], y[:, part], b)
                    piece.sum().backward()  # type: ignore[no-untyped-call]
                    losses += piece.detach()
            opt.step()
            last = losses
            epoch_loss += last
            step += 1
            if points:
                since += losses
                since_steps += 1
                if step in points:
                    on_record(step, net, (since / since_steps).tolist())  # type: ignore[misc]
                    since, since_steps = torch.zeros(r, device=device), 0
            if step >= total:
                break
        newly = (stopped_at < 0) & ~torch.isfinite(epoch_loss)
        stopped_at = torch.where(newly, torch.full_like(stopped_at, step), stopped_at)
        epoch += 1
        if check_each_epoch and bool((stopped_at >= 0).all()):
            break  # every model has diverged: the rest would be garbage
        if on_epoch is not None:
            net.steps_done = step
            on_epoch(epoch, net)
    net.steps_done = step
    net.write_back()
    seconds = (time.perf_counter() - start) / r  # the R runs overlap: each gets an even share
    stats = [
        TrainStats(stop, seconds, float("nan"), True) if stop >= 0 else TrainStats(step, seconds, loss, False)
        for stop, loss in zip(stopped_at.tolist(), last.tolist(), strict=True)
    ]
    return net, stats


def train_group(
    specs: Sequence[ArchSpec],
    seeds: Sequence[int],
    train: Split,
    test: Split,
    config: TrainConfig,
    options: FastOptions | None = None,
    micro_batch_bytes: int | None = None,
) -> list[RunOutcome]:
    """One stacked network of these (spec, seed) runs (one :func:`group_key`), trained, then tested stacked.

    What ``train_and_evaluate`` returns for each run, to float tolerance (one run: bit for bit on a
    CPU); ``seconds`` is each run's even share of the wall time.
    """
    start = time.perf_counter()
    models = [
        build_model(spec, train.in_channels, train.image_size, train.num_classes, seed=s).to(train.device)
        for spec, s in zip(specs, seeds, strict=True)
    ]
    curves: list[list[dict[str, Any]]] = [[] for _ in models]
    per_epoch, spent = math.ceil(len(train) / config.batch_size), 0.0

    def record(step: int, net: StackedConvNets, losses: list[float]) -> None:
        nonlocal spent
        begin = time.perf_counter()
        accs = stacked_accuracy(net, test)
        for curve, acc, loss in zip(curves, accs, losses, strict=True):
            curve.append(curve_point(step, per_epoch, acc if math.isfinite(loss) else math.nan, loss))
        spent += time.perf_counter() - begin

    wanted = bool(config.curve or config.curve_steps)
    net, stats = train_stacked(
        models,
        train,
        config,
        seeds,
        options=options,
        on_record=record if wanted else None,
        micro_batch_bytes=micro_batch_bytes,
    )
    accs = stacked_accuracy(net, test)
    # The runs overlap: each gets an even share (the curve's test passes left out, as train_and_evaluate does).
    seconds = (time.perf_counter() - start - spent) / len(models)
    return [
        RunOutcome(float("nan"), seconds, st.steps, count_params(m), "diverged", tuple(c))
        if st.diverged
        else RunOutcome(acc, seconds, st.steps, count_params(m), "ok", tuple(c))
        for m, acc, st, c in zip(models, accs, stats, curves, strict=True)
    ]


def step_memory(spec: ArchSpec, in_channels: int, image_size: int, batch: int) -> int:
    """Rough bytes one model's training step holds at its peak (float32 activations).

    Each block keeps about six maps of its size alive at once (conv, norm and activation outputs
    kept for the backward pass, and their gradients); weights are small next to them.
    """
    return sum(6 * 4 * batch * spec.width * b.size * b.size for b in blocks(spec, in_channels, image_size))



@torch.no_grad()
def stacked_accuracy(net: StackedConvNets, split: Split, batch_size: int | None = None) -> list[float]:
    """Each model's top-1 accuracy in eval mode (BatchNorm on its own running statistics).

    ``batch_size``: test images per forward (default ``eval_batch_size`` for the R models' width).
    """
    if batch_size is None:
        batch_size = eval_batch_size(split, net.r * net.models[0].spec.width)
    correct = torch.zeros(net.r, dtype=torch.long, device=split.device)
    for i in range(0, len(split), batch_size):
        logits = net.forward(split.images[i : i + batch_size], training=False)
        correct += (logits.argmax(-1) == split.labels[i : i + batch_size]).sum(1)
    return [c / max(len(split), 1) for c in correct.tolist()]




__all__ = [
    "COMPILE_MODES",
    "FastOptions",
    "StackedConvNets",
    "group_key",
    "stacked_accuracy",
    "step_memory",
    "train_group",
    "train_stacked",
]
