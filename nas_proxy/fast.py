"""Train seeds of a candidate, or candidates of one shape, fast: stacked nets, worker processes, the plain loop.

``train_many(spec, train, test, config, seeds)`` returns what ``[train_and_evaluate(spec, train,
test, config, s) for s in seeds]`` returns, to float tolerance, by one of these strategies:

- ``loop``: exactly that list comprehension (the readable reference in ``train.py``).
- ``stacked``: the R models as ONE network whose channels are the R models side by side. Every
  model is built by ``build_model(spec, seed=s)`` as in the loop, then its tensors are concatenated:
  conv ``k`` becomes a grouped conv (``groups=R``), BatchNorm / InstanceNorm / GroupNorm act per
  channel (or per group) and so stay per model, LayerNorm and the head are batched per model.
  The loss is the sum of the R mean losses, so each model's gradient is its own; SGD is elementwise,
  so SGD on the stacked tensors is R independent SGDs. One Python step trains R models: this wins
  where a step is overhead-bound (narrow nets, GPUs).
  Candidates of one :func:`group_key` (depth, width, pooling) stack the same way with their own
  norms and activations (:func:`train_candidates`, the evaluator's ``batch_candidates``): where
  models differ, each run of equal layers acts on its own channel blocks.
- ``parallel``: seeds split over ``n_jobs`` joblib (loky) worker processes with one torch thread
  each, each worker running ``loop`` or ``stacked`` on its share. On a CPU, narrow nets use one
  core badly (small kernels, Python overhead), so two one-thread workers beat one two-thread
  process.
- ``auto``: :func:`choose_plan`, a cost model fitted to measurements (see its docstring).

Equality with the loop: same initial weights (same ``build_model`` seeds), same batch order (the
same seeded ``randperm``), same learning-rate schedule. One model in the stacked code runs the
loop's own kernels on the loop's own batches, so on a CPU it is bit-identical to ``train_model``
(tests/test_fast.py checks every layer type); a ``parallel`` worker running one model at a time
with one thread matches a one-thread loop exactly and a two-thread loop as closely as the loop
matches itself (ConvNet-D3-W8, 100 steps: 9.9e-5 relative). Several models in one network change
the summation order of the grouped convs and the batched head, and on a CPU each group norm ->
(leaky) ReLU -> average pooling block runs as one fused kernel (:mod:`nas_proxy.fused`, 3.5x
faster than PyTorch's three kernels on a stack's 32x32 maps, as exact as they are). Such a
training run is chaotic: started from initial weights moved by 1e-7 relative, the loop's own seed
0 of ConvNet-D3-W8 ends 3.9e-4 to 1.6e-2 from where it ends unmoved (100 steps, 100 images). A
one-thread worker's stack of 5 ends 1.2e-2 from the two-thread loop (3.7e-4 before the fused
kernel; benchmarks/train_batched.py). Test accuracies stay within a few tenths of a point.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy import fused
from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.microbatch import keep_freed_memory, micro_batch_size, splittable
from nas_proxy.models import ConvNet, build_model, count_flops, count_params, first_padding
from nas_proxy.space import ArchSpec
from nas_proxy.train import (
    EpochCallback,
    RunOutcome,
    TrainConfig,
    TrainStats,
    curve_point,
    eval_batch_size,
    train_and_evaluate,
    train_model,
)

STRATEGIES: tuple[str, ...] = ("auto", "loop", "stacked", "parallel")


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
        return avg_pool_2x2(x)
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
        # on a CPU such a block runs as one fused kernel (nas_proxy.fused).
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
            if fuse and i in self.fusable_rows and fused.supports(x):
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
        return fused.norm_act_pool(x, weight, bias, groups, norm.settings["eps"], act.settings["slope"])

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


class _AvgPool2x2(torch.autograd.Function):
    """2x2 average pooling by strided adds, in the order of PyTorch's CPU kernel (see avg_pool_2x2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        v = x.view(n, c, h // 2, 2, w // 2, 2)
        out = torch.add(v[:, :, :, 0, :, 0], v[:, :, :, 0, :, 1])  # ((x00 + x01) + x10) + x11, as the kernel sums
        out.add_(v[:, :, :, 1, :, 0]).add_(v[:, :, :, 1, :, 1])
        return out.div_(4)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        n, c, h2, w2 = grad.shape
        spread = (grad / 4).view(n, c, h2, 1, w2, 1).expand(n, c, h2, 2, w2, 2)  # each input gets its window's share
        return spread.reshape(n, c, 2 * h2, 2 * w2)


_POOL_MATRICES: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
# Per (shape, dtype, device, threads): does the GEMM form reproduce PyTorch's kernel bit for bit here?
_GEMM_EXACT: dict[tuple[Any, ...], bool] = {}


def _pool_matrix(w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed (2W, W/2) matrix that averages each 2x2 window of a pair of image rows."""
    key = (w, device, dtype)
    pool = _POOL_MATRICES.get(key)
    if pool is None:
        pool = torch.zeros(2 * w, w // 2, device=device, dtype=dtype)
        cols = torch.arange(w // 2, device=device)
        for offset in (0, 1, w, w + 1):  # the 2x2 window: two columns in each of two rows
            pool[2 * cols + offset, cols] = 0.25
        _POOL_MATRICES[key] = pool
    return pool


def _gemm_pool(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return (x.reshape(-1, 2 * w) @ _pool_matrix(w, x.device, x.dtype)).view(n, c, h // 2, w // 2)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, 2)``, bit for bit, faster on a CPU for narrow nets.

    PyTorch's NCHW pooling kernel walks one output at a time and dominated a narrow ConvNet's
    step. Two exact replacements, forward plus backward 2-3x faster: one GEMM of each pair of
    image rows with a fixed (2W, W/2) matrix of 0.25s (the fastest), and three strided adds in the
    kernel's own order (``((x00 + x01) + x10) + x11``, then ``/ 4``). A GEMM may sum a window's four
    products in another order, which depends on the BLAS and the shape (this project's CPU: exact
    at widths 16 and 32, not 14), so the GEMM is used for a shape only after a random probe of that
    shape came out identical to the kernel (its backward is exact anyway: one product per input).
    Without autograd (testing) the strided adds serve: shapes seen once do not repay a probe.
    Odd sizes (floor mode drops a row or column) and other devices keep the plain kernel.
    """
    h, w = x.shape[-2:]
    if x.device.type != "cpu" or h % 2 or w % 2 or not x.is_contiguous():
        return F.avg_pool2d(x, 2, 2)  # a GPU's pooling kernel is fast: the tricks are for CPUs
    if not torch.is_grad_enabled():  # testing: shapes seen once, not worth a probe
        return _AvgPool2x2.forward(None, x)
    key = (tuple(x.shape), x.dtype, x.device, torch.get_num_threads())
    exact = _GEMM_EXACT.get(key)
    if exact is None:
        with torch.no_grad():
            probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
            exact = _GEMM_EXACT[key] = torch.equal(_gemm_pool(probe), F.avg_pool2d(probe, 2, 2))
    if exact:
        return _gemm_pool(x)
    out: torch.Tensor = _AvgPool2x2.apply(x)
    return out


def _cat(tensors: Any, grad: bool = True) -> torch.Tensor:
    return torch.cat([t.detach() for t in tensors]).requires_grad_(grad)


def _stack(tensors: Any) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).requires_grad_(True)


# ----------------------------------------------------------------------------- strategies


def _train_loop(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: Sequence[int]
) -> list[RunOutcome]:
    return [train_and_evaluate(spec, train, test, config, s) for s in seeds]


def train_stacked(
    models: Sequence[ConvNet],
    train: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    options: FastOptions | None = None,
    on_epoch: Callable[[int, StackedConvNets], None] | None = None,
    on_record: Callable[[int, StackedConvNets, list[float]], None] | None = None,
) -> tuple[StackedConvNets, list[TrainStats]]:
    """Train ``models`` (one :func:`group_key`, on ``train``'s device) in place as one stacked network.

    ``train_model(models[i], train, config, seeds[i])`` for every i, to float tolerance (one model
    on a CPU: bit for bit): the same batch order (each seed's own ``randperm``), learning-rate
    schedule and divergence rule. ``on_epoch(epoch, net)`` runs after every epoch (and may raise,
    as an Optuna pruner does). ``on_record(step, net, losses)`` runs after each of
    ``config.record_steps`` (learning-curve points) with each model's mean training loss since the
    previous point. Returns the stacked network (for :func:`stacked_accuracy`) and each model's stats.
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
    autocast = options.bf16 and device.type == "cuda"

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
    check_each_epoch = on_epoch is not None or device.type == "cpu"
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
            micro = micro_batch_size(models[0].spec, train.images.shape, b, device, models=r) if split else b
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


def _train_chunk(
    specs: Sequence[ArchSpec],
    seeds: Sequence[int],
    train: Split,
    test: Split,
    config: TrainConfig,
    options: FastOptions,
) -> list[RunOutcome]:
    """One stacked network of these (spec, seed) runs (one group), trained, then tested stacked."""
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
    net, stats = train_stacked(models, train, config, seeds, options=options, on_record=record if wanted else None)
    accs = stacked_accuracy(net, test)
    # The runs overlap: each gets an even share (the curve's test passes left out, as train_and_evaluate does).
    seconds = (time.perf_counter() - start - spent) / len(models)
    return [
        RunOutcome(float("nan"), seconds, st.steps, count_params(m), "diverged", tuple(c))
        if st.diverged
        else RunOutcome(acc, seconds, st.steps, count_params(m), "ok", tuple(c))
        for m, acc, st, c in zip(models, accs, stats, curves, strict=True)
    ]


def _train_stacked(
    spec: ArchSpec,
    train: Split,
    test: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    options: FastOptions,
    stack_size: int,
) -> list[RunOutcome]:
    """Seeds in chunks of ``stack_size``, each chunk one stacked network."""
    outcomes: list[RunOutcome] = []
    for j in range(0, len(seeds), stack_size):
        chunk = seeds[j : j + stack_size]
        outcomes += _train_chunk([spec] * len(chunk), chunk, train, test, config, options)
    return outcomes


def step_memory(spec: ArchSpec, in_channels: int, image_size: int, batch: int) -> int:
    """Rough bytes one model's training step holds at its peak (float32 activations).

    Each block keeps about six maps of its size alive at once (conv, norm and activation outputs
    kept for the backward pass, and their gradients); weights are small next to them.
    """
    total, size = 0, image_size
    for d in range(spec.depth):
        size += 2 * (first_padding(in_channels) if d == 0 else 1) - 2
        total += 6 * 4 * batch * spec.width * size * size
        if spec.pool != "none":
            size //= 2
    return total


def default_group_memory(device: torch.device) -> int:
    """Activation bytes a stacked group may take: a quarter of a GPU's memory, 2 GiB elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory // 4)
    return 2 << 30


def train_candidates(
    runs: Sequence[tuple[ArchSpec | str, int]],
    train: Split,
    test: Split,
    config: TrainConfig,
    *,
    max_group: int | None = None,
    group_memory: int | None = None,
    options: FastOptions | None = None,
) -> list[RunOutcome]:
    """``[train_and_evaluate(spec, train, test, config, seed) for spec, seed in runs]``, to float tolerance, stacked.

    Runs whose architectures share :func:`group_key` (depth, width, pooling; norms and
    activations may differ) train as one stacked network: candidates of a sweep, seeds, or both.
    A group is split into chunks of at most ``max_group`` models whose step fits ``group_memory``
    bytes (default :func:`default_group_memory`, by :func:`step_memory`). This is the GPU path of
    a whole sweep: convnet720's 720 candidates are 48 groups of 15, so a step trains 15 small
    networks for the launches of about one. On a CPU stacking several models loses (see
    :func:`choose_plan`), so the evaluator takes this path there only when asked.
    A model that diverges is reported as such and touches no other model of its group.
    Results come back in ``runs`` order.
    """
    specs = [ArchSpec.from_id(a) if isinstance(a, str) else a for a, _ in runs]
    seeds = [int(s) for _, s in runs]
    if max_group is not None and max_group < 1:
        raise NasProxyError(f"max_group must be at least 1, got {max_group}")
    budget = default_group_memory(train.device) if group_memory is None else group_memory
    batch = min(config.batch_size, len(train))
    groups: dict[tuple[int, int, str], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(group_key(spec), []).append(i)
    outcomes: dict[int, RunOutcome] = {}
    for members in groups.values():
        members.sort(key=lambda i: (specs[i].norm, specs[i].act))  # equal layers side by side: few segments
        per_model = step_memory(specs[members[0]], train.in_channels, train.image_size, batch)
        size = max(1, min(max_group or len(members), budget // max(per_model, 1)))
        for j in range(0, len(members), size):
            chunk = members[j : j + size]
            outs = _train_chunk(
                [specs[i] for i in chunk], [seeds[i] for i in chunk], train, test, config, options or FastOptions()
            )
            outcomes.update(zip(chunk, outs, strict=True))
    return [outcomes[i] for i in range(len(runs))]


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


def _worker_task(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: list[int], plan: Plan, options: FastOptions
) -> list[RunOutcome]:
    torch.set_num_threads(1)  # one core per worker: narrow nets use a second thread badly
    keep_freed_memory()
    return _run_plan(spec, train, test, config, seeds, plan, options)


def _train_parallel(
    spec: ArchSpec,
    train: Split,
    test: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    plan: Plan,
    options: FastOptions,
) -> list[RunOutcome]:
    """Seeds dealt round-robin to ``plan.n_jobs`` loky workers of one torch thread each."""
    from joblib import Parallel, delayed

    chunks = [list(seeds[j :: plan.n_jobs]) for j in range(plan.n_jobs) if seeds[j :: plan.n_jobs]]
    inner = Plan(plan.inner, stack_size=plan.stack_size)
    # CPU tensors travel to the workers pickled: a 100-image proxy and a 10k test set are a few MB.
    cpu_train, cpu_test = train.to("cpu"), test.to("cpu")
    parts = Parallel(n_jobs=len(chunks), backend="loky")(
        delayed(_worker_task)(spec, cpu_train, cpu_test, config, chunk, inner, options) for chunk in chunks
    )
    by_seed: dict[int, RunOutcome] = {}
    for chunk, outs in zip(chunks, parts, strict=True):
        by_seed.update(zip(chunk, outs, strict=True))
    return [by_seed[s] for s in seeds]


def _run_plan(
    spec: ArchSpec,
    train: Split,
    test: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    plan: Plan,
    options: FastOptions,
) -> list[RunOutcome]:
    if plan.strategy == "parallel":
        return _train_parallel(spec, train, test, config, seeds, plan, options)
    if plan.strategy == "stacked":
        return _train_stacked(spec, train, test, config, seeds, options, plan.stack_size)
    return _train_loop(spec, train, test, config, seeds)


# ----------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Plan:
    """How :func:`train_many` trains: a strategy, models per stacked network, worker processes.

    ``inner`` is what each ``parallel`` worker runs on its share of the seeds (``loop`` or ``stacked``).
    """

    strategy: str
    stack_size: int = 1
    n_jobs: int = 1
    inner: str = "loop"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES or self.strategy == "auto":
            raise UnknownNameError("training strategy", self.strategy, STRATEGIES[1:])
        if self.inner not in ("loop", "stacked"):
            raise UnknownNameError("worker strategy", self.inner, ["loop", "stacked"])
        if self.stack_size < 1 or self.n_jobs < 1:
            raise NasProxyError(f"stack_size and n_jobs must be at least 1, got {self.stack_size}, {self.n_jobs}")


def choose_plan(spec: ArchSpec, train: Split, config: TrainConfig, n_seeds: int, n_jobs: int) -> Plan:
    """The plan ``strategy="auto"`` uses: a cost model from measurements on the project's 2-core CPU.

    - GPU: every seed in one stacked network (a small net is launch-bound: R models cost about one).
    - CPU, small avg-pooled nets (up to ~20 MFLOPs an image): the stacked code, the seeds of a
      process in one network (up to :data:`CPU_STACK_MAX`). Stacking R=5-10 narrow models made a
      model's step 1.05-1.7x faster than one model alone (ConvNet-D3, 100 images, widths 4-32, one
      or two threads), now that their activations come in micro-batches or stay in kept memory;
      and even one model is 1.1-1.3x the reference step (GEMM pooling replaces PyTorch's slow NCHW
      pooling kernel). With instance or group norm, the fused norm-ReLU-pooling kernel of a stack
      (:mod:`nas_proxy.fused`) takes a further third off: a worker's 5 seeds of ConvNet-D3-W8,
      100 epochs, trained in 2.3 s instead of 3.4 s. LayerNorm nets stack one model per network
      (their stacked norm is not PyTorch's fused kernel: 0.97x); max-pooled and larger nets keep
      the reference loop (a wash or slower).
    - CPU with ``n_jobs > 1``: seeds go to one-thread worker processes, each with its share, when
      the net is small (a narrow net uses a second intra-op thread badly, and not at all on a busy
      host) or when the seeds split evenly over the workers and the net is not wide (up to ~50
      MFLOPs it then scales as well as with threads; from the default ConvNet up, threads scale
      better on a quiet host).
    """
    if train.device.type == "cuda":
        return Plan("stacked", stack_size=n_seeds)
    flops = count_flops(spec, train.in_channels, train.image_size, train.num_classes)
    inner = "stacked" if spec.pool == "avgpool" and flops <= STACKED_STEP_MAX_FLOPS else "loop"
    jobs = min(n_jobs, n_seeds)
    even = n_seeds % jobs == 0 and flops <= PARALLEL_EVEN_MAX_FLOPS
    parallel = jobs > 1 and (flops <= PARALLEL_ALWAYS_MAX_FLOPS or even)
    per_process = -(-n_seeds // jobs) if parallel else n_seeds  # the seeds one process trains
    stack = min(per_process, CPU_STACK_MAX) if inner == "stacked" and spec.norm != "layernorm" else 1
    if parallel:
        return Plan("parallel", stack_size=stack, n_jobs=jobs, inner=inner)
    return Plan(inner, stack_size=stack)


# Models per stacked network on a CPU: the gain was measured up to 10; beyond, the micro-batches of
# a wide stack shrink towards one image and their per-call overhead takes over.
CPU_STACK_MAX = 10
# Forward FLOPs of one image up to which the one-model stacked step beats the reference step on CPU.
STACKED_STEP_MAX_FLOPS = 20_000_000
# Up to here a step is overhead-bound: one-thread workers win even when the seeds split unevenly.
PARALLEL_ALWAYS_MAX_FLOPS = 10_000_000
# Up to here one-thread workers match threads when the seeds split evenly. Above it a quiet
# machine's two intra-op threads scale better: workers measured 0.92x for the default ConvNet
# (98 MFLOPs) and 0.87x for W256 (385 MFLOPs) against a warm 2-thread loop.
PARALLEL_EVEN_MAX_FLOPS = 50_000_000


def stacks_fused(spec: ArchSpec) -> bool:
    """Whether stacked seeds of ``spec`` run its norm -> activation -> pooling blocks as the fused
    CPU kernel (:mod:`nas_proxy.fused`): small avg-pooled nets with instance or group norm and a
    (leaky) ReLU, where the kernel is built. There, seeds stacked in the evaluator trained 1.5-1.8x
    faster than one by one (12 such narrow candidates x 4 seeds, 30 epochs, one process)."""
    return (
        spec.pool == "avgpool"
        and spec.norm in ("instancenorm", "groupnorm")
        and spec.act in ("relu", "leakyrelu")
        and count_flops(spec) <= STACKED_STEP_MAX_FLOPS
        and fused.available()
    )


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_many(
    spec: ArchSpec | str,
    train: Split,
    test: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    strategy: str = "auto",
    n_jobs: int = 1,
    stack_size: int | None = None,
    options: FastOptions | None = None,
) -> list[RunOutcome]:
    """``[train_and_evaluate(spec, train, test, config, s) for s in seeds]``, to float tolerance, faster.

    ``strategy``: one of :data:`STRATEGIES` (``auto``: :func:`choose_plan`). ``n_jobs``: worker
    processes for ``parallel`` (``-1``: one per core); ``auto`` uses workers only when
    ``n_jobs > 1``, so inside an evaluator's own worker pass ``n_jobs=1``. ``stack_size``: models per
    stacked network (default: all seeds for ``stacked``; for ``parallel`` and ``auto`` what
    :func:`choose_plan` picks, on a CPU all of a worker's seeds where stacking pays).
    Results come back in ``seeds`` order; ``seconds`` of a stacked run is its share of the wall time.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_id(spec)
    if strategy not in STRATEGIES:
        raise UnknownNameError("training strategy", strategy, STRATEGIES)
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise NasProxyError(f"seeds must be distinct, got {seeds}")
    jobs = _cpu_count() if n_jobs == -1 else n_jobs
    if jobs < 1:
        raise NasProxyError(f"n_jobs must be -1 or at least 1, got {n_jobs}")
    if not seeds:
        return []
    if strategy == "parallel" and train.device.type != "cpu":
        raise NasProxyError("strategy 'parallel' runs CPU worker processes; on a GPU use 'stacked' or 'auto'")
    if strategy == "auto":
        plan = choose_plan(spec, train, config, len(seeds), jobs)
        if stack_size is not None:
            plan = Plan(plan.strategy, stack_size, plan.n_jobs, plan.inner)
    elif strategy == "parallel":
        workers = max(1, min(_cpu_count() if n_jobs == 1 else jobs, len(seeds)))  # 'parallel' asks for workers
        share = choose_plan(spec, train, config, -(-len(seeds) // workers), 1)  # what one worker runs
        inner = "stacked" if stack_size else share.strategy
        plan = Plan("parallel", stack_size or share.stack_size, workers, inner)
    else:
        plan = Plan(strategy, stack_size or len(seeds))
    return _run_plan(spec, train, test, config, seeds, plan, options or FastOptions())


def train_model_fast(
    model: ConvNet, train: Split, config: TrainConfig, seed: int, *, on_epoch: EpochCallback | None = None
) -> TrainStats:
    """Drop-in for ``train_model`` (same arguments, same result) that takes the stacked step where faster.

    That is where :func:`choose_plan` puts one model in the stacked code: a GPU, or a CPU and an
    avg-pooled net up to ``STACKED_STEP_MAX_FLOPS``; on a CPU the result is bit-identical to
    ``train_model``. ``on_epoch(epoch, model)`` sees ``model`` holding the epoch's weights (the
    Optuna objective reports and prunes there). Elsewhere this is ``train_model`` itself.
    """
    plan = choose_plan(model.spec, train, config, n_seeds=1, n_jobs=1)
    if plan.strategy != "stacked":
        return train_model(model, train, config, seed, on_epoch=on_epoch)

    def write_back_then(epoch: int, net: StackedConvNets) -> None:
        net.write_back()
        on_epoch(epoch, model)  # type: ignore[misc]  # only passed along when given

    _, (stats,) = train_stacked([model], train, config, [seed], on_epoch=write_back_then if on_epoch else None)
    return stats


def train_and_evaluate_fast(
    spec: ArchSpec | str, train: Split, test: Split, config: TrainConfig, seed: int
) -> RunOutcome:
    """Drop-in for ``train_and_evaluate`` (same signature; module-level so loky can pickle it).

    One seed through the ``auto`` plan in this process: e.g. the evaluator's ``trainer=``.
    """
    return train_many(spec, train, test, config, [seed], strategy="auto", n_jobs=1)[0]


__all__ = [
    "STRATEGIES",
    "FastOptions",
    "Plan",
    "StackedConvNets",
    "avg_pool_2x2",
    "choose_plan",
    "default_group_memory",
    "group_key",
    "stacked_accuracy",
    "stacks_fused",
    "step_memory",
    "train_and_evaluate_fast",
    "train_candidates",
    "train_many",
    "train_model_fast",
    "train_stacked",
]
