"""Synthesized proxies: gradient matching (DC, DSA) and distribution matching (DM).

All three learn ``ipc`` synthetic images per class (REFERENCE.md section 3):

- DC (Zhao, Mopuri & Bilen, ICLR 2021): each iteration draws a fresh random ConvNet and, for
  ``outer_loop`` steps, moves the synthetic images so that the network's gradient on them matches
  its gradient on real images of the same class (:func:`distance`), training the network on the
  synthetic set for ``inner_loop`` epochs between steps.
- DSA (Zhao & Bilen, ICML 2021): the same, with one random differentiable augmentation applied
  identically to the real and synthetic batch of every class step (:mod:`.augment`).
- DM (Zhao & Bilen, WACV 2023): each iteration draws a fresh frozen random ConvNet and matches
  the per-class mean embeddings of (augmented) real and synthetic images.

The pieces are pure functions (``distance``, ``gradient_matching_step``,
``distribution_matching_step``); the builders own the loop. That loop keeps the data on its
device, draws every random choice from one seeded CPU ``torch.Generator`` (so a seed gives the
same images on any device, and bit-identical ones on CPU), reads the loss back to the host only
every few iterations, shows a tqdm bar (plain log lines outside a terminal), and checkpoints:
after the first iteration, then every minute and on Ctrl-C it saves the state at the last
iteration boundary, and a rerun with the same checkpoint path resumes to the
exact images an uninterrupted run would give.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError, check_positive, check_positive_int
from nas_proxy.log import progress_bar
from nas_proxy.microbatch import cross_entropy_backward, cross_entropy_grad, micro_batch_size, training_micro_batch
from nas_proxy.models import ConvNet, build_model
from nas_proxy.proxies.augment import AugParams, apply, augment, default_strategy, parse_strategy, sample_params
from nas_proxy.proxies.base import BuildContext, BuildResult, ProxyBuilder, class_balanced_labels
from nas_proxy.proxies.embedding import split_hash
from nas_proxy.space import DEFAULT_ARCH, ArchSpec
from nas_proxy.store import save_torch_atomic

# ----------------------------------------------------------------------------- gradient distances

Gradients = Sequence[torch.Tensor]


def _layerwise(g_syn: Gradients, g_real: Gradients) -> torch.Tensor:
    """The paper's distance: per output unit, 1 - cosine, summed over units and layers.

    Rows are output units: a conv weight (out, in, kh, kw) becomes out x in*kh*kw, a linear weight
    stays as it is, a layernorm affine (C, H, W) becomes C x H*W. 1-D tensors (biases, norm
    affine vectors) are skipped, as the authors' ``distance_wb``.
    """
    total = g_real[0].new_zeros(())
    for s, r in zip(g_syn, g_real, strict=True):
        if r.ndim <= 1:
            continue
        a, b = s.reshape(s.shape[0], -1), r.reshape(r.shape[0], -1)
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def _flat(grads: Gradients) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _mse(g_syn: Gradients, g_real: Gradients) -> torch.Tensor:
    """Squared Euclidean distance of the concatenated gradients (the seed's "Euclidean")."""
    return ((_flat(g_syn) - _flat(g_real)) ** 2).sum()


def _cos(g_syn: Gradients, g_real: Gradients) -> torch.Tensor:
    """1 - cosine of the concatenated gradients."""
    a, b = _flat(g_syn), _flat(g_real)
    cos: torch.Tensor = (a * b).sum() / (a.norm() * b.norm() + 1e-6)
    return torch.ones_like(cos) - cos


DISTANCES: dict[str, Callable[[Gradients, Gradients], torch.Tensor]] = {
    "ours": _layerwise,
    "mse": _mse,
    "cos": _cos,
}
DistanceName = Literal["ours", "mse", "cos"]


def distance(g_syn: Gradients, g_real: Gradients, metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of per-parameter gradients (same order and shapes).

    ``"ours"`` is the layer-wise distance of the DC paper, ``"mse"`` and ``"cos"`` the two
    alternatives of its ablation (REFERENCE.md section 3). Differentiable in ``g_syn``.
    """
    if metric not in DISTANCES:
        raise NasProxyError(f"unknown gradient distance {metric!r}; valid: {', '.join(DISTANCES)}")
    if len(g_syn) != len(g_real) or not g_real:
        raise NasProxyError(f"gradient lists differ in length ({len(g_syn)} vs {len(g_real)}) or are empty")
    for s, r in zip(g_syn, g_real, strict=True):
        if s.shape != r.shape:
            raise NasProxyError(f"gradient shapes differ: {tuple(s.shape)} vs {tuple(r.shape)}")
    return DISTANCES[metric](g_syn, g_real)


# ----------------------------------------------------------------------------- loops per ipc

# (outer_loop, inner_loop) of the authors' get_loops (REFERENCE.md section 3).
LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc``: the reference table's entry of the nearest tabulated ipc.

    The authors define only ipc 1, 10, 20, 30, 40, 50 (and stop otherwise); we take the nearest
    entry, ties to the smaller ipc: 2-5 -> (1, 1), 6-15 -> (10, 50), ..., above 50 -> (50, 10).
    """
    nearest = min(LOOPS, key=lambda k: (abs(k - ipc), k))
    return LOOPS[nearest]


# ----------------------------------------------------------------------------- shared pieces


def class_rows(train: Split) -> list[torch.Tensor]:
    """Rows of each class (on the data's device), computed once per build."""
    return [train.indices_of_class(c) for c in range(train.num_classes)]


def draw_rows(rows: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Up to ``n`` distinct random rows of one class (the authors' ``get_images``)."""
    pick = torch.randperm(len(rows), generator=g)[:n]
    return rows[pick.to(rows.device, non_blocking=True)]


def init_images(train: Split, rows: list[torch.Tensor], ipc: int, init: str, g: torch.Generator) -> torch.Tensor:
    """Initial synthetic images, class c in rows c*ipc..: N(0, 1) noise or random real images."""
    if init == "real":
        return torch.cat([train.images[draw_rows(r, ipc, g)] for r in rows]).clone()
    shape = (train.num_classes * ipc, *train.images.shape[1:])
    return torch.randn(shape, generator=g).to(train.device)


def fresh_net(arch: str, train: Split, g: torch.Generator) -> ConvNet:
    """A randomly initialised ``arch`` whose weights come from ``g`` (so runs are reproducible)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    try:
        net = build_model(arch, train.in_channels, train.image_size, train.num_classes, seed=seed)
    except ValueError as exc:
        if isinstance(exc, NasProxyError):
            raise
        raise NasProxyError(f"matching architecture: {exc}") from exc
    return net.to(train.device)


def _batchnorms(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def freeze_batchnorm(
    net: nn.Module, train: Split, rows: list[torch.Tensor], per_class: int, g: torch.Generator
) -> None:
    """Set BatchNorm running statistics from ``per_class`` real images a class, then freeze them.

    A synthetic batch (one image at ipc 1) is too small for batch statistics, so the authors run
    real images through the net in train mode and switch BatchNorm to eval for matching.
    """
    bns = _batchnorms(net)
    if not bns:
        return
    x = torch.cat([train.images[draw_rows(r, per_class, g)] for r in rows])
    net.train()
    net(x)
    for m in bns:
        m.eval()


def train_on_synthetic(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    g: torch.Generator,
    strategy: tuple[str, ...] = (),
) -> None:
    """The inner loop: ``epochs`` epochs of SGD on the (detached) synthetic set, shuffled by ``g``.

    With a DSA strategy every batch is augmented, one draw per image, as the authors' DSA code.
    """
    net.train()
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(images.device, non_blocking=True)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = augment(images[idx], strategy, g) if strategy else images[idx]
            opt.zero_grad(set_to_none=True)
            cross_entropy_backward(net, x, labels[idx], training_micro_batch(net, x))
            opt.step()


def _siamese(strategy: tuple[str, ...], size: tuple[int, int], g: torch.Generator) -> AugParams | None:
    """One draw shared by every image of the real and the synthetic batch of a class step."""
    return sample_params(strategy, size, g, n=1) if strategy else None


# ----------------------------------------------------------------------------- one iteration


@dataclass(frozen=True)
class MatchingSetup:
    """What one gradient-matching iteration needs besides the images (resolved builder settings)."""

    arch: str
    ipc: int
    outer_loop: int
    inner_loop: int
    batch_real: int
    batch_train: int
    lr_net: float
    momentum_net: float
    metric: str
    bn_real_per_class: int
    strategy: tuple[str, ...] = ()  # empty: DC; a DSA strategy: siamese augmentation
    real_dtype: str = "float32"  # "bfloat16": the real-gradient pass under autocast
    micro_batch: int | None = None  # real images per micro-batch of the real gradient; None: all at once


def gradient_matching_step(
    images: torch.Tensor,
    opt_img: torch.optim.Optimizer,
    train: Split,
    rows: list[torch.Tensor],
    setup: MatchingSetup,
    g: torch.Generator,
) -> torch.Tensor:
    """One DC/DSA iteration on the leaf tensor ``images``; returns the mean matching loss (on device).

    REFERENCE.md section 3: a fresh net; ``outer_loop`` times: (BatchNorm: set and freeze its
    statistics on real data), per class the distance between the detached real gradient and the
    differentiable synthetic gradient, summed over classes, one optimizer step on the images;
    then, unless it was the last outer step, ``inner_loop`` epochs of training the net on them.
    """
    classes, ipc = train.num_classes, setup.ipc
    size = (images.shape[-2], images.shape[-1])
    net = fresh_net(setup.arch, train, g)
    net.train()
    # 1-D tensors do not count in the layer-wise distance; not asking for their gradients saves work.
    params = [p for p in net.parameters() if setup.metric != "ours" or p.ndim > 1]
    opt_net = torch.optim.SGD(net.parameters(), lr=setup.lr_net, momentum=setup.momentum_net)
    labels = class_balanced_labels(classes, ipc, images.device)
    # The real gradient is the bulk of the arithmetic (batch_real images a class vs ipc) and only
    # its direction per output unit matters: bfloat16 moved the loss by at most 6e-4 relative.
    real_bf16 = setup.real_dtype == "bfloat16"
    total = images.new_zeros(())
    for outer in range(setup.outer_loop):
        freeze_batchnorm(net, train, rows, setup.bn_real_per_class, g)
        loss = images.new_zeros(())
        for c in range(classes):
            x_real = train.images[draw_rows(rows[c], setup.batch_real, g)]
            x_syn = images[c * ipc : (c + 1) * ipc]
            aug = _siamese(setup.strategy, size, g)
            x_real, x_syn = apply(x_real, aug), apply(x_syn, aug)
            y_real = torch.full((len(x_real),), c, device=images.device)
            g_real = cross_entropy_grad(net, x_real, y_real, params, setup.micro_batch or len(x_real), bf16=real_bf16)
            g_syn = torch.autograd.grad(
                F.cross_entropy(net(x_syn), labels[c * ipc : (c + 1) * ipc]), params, create_graph=True
            )
            loss = loss + distance(g_syn, g_real, setup.metric)
        # Only the images' gradient is wanted: grad() leaves the net's .grad untouched.
        (images.grad,) = torch.autograd.grad(loss, [images])
        opt_img.step()
        total += loss.detach()
        if outer == setup.outer_loop - 1:
            break
        train_on_synthetic(
            net, opt_net, images.detach().clone(), labels, setup.inner_loop, setup.batch_train, g, setup.strategy
        )
    return total / (classes * setup.outer_loop)


def _mean_embedding(net: ConvNet, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean embedding of ``x``, embedded ``chunk`` images at a time."""
    total = net.embed(x[:chunk]).sum(0)
    for start in range(chunk, len(x), chunk):
        total += net.embed(x[start : start + chunk]).sum(0)
    return total / len(x)


def distribution_matching_step(
    images: torch.Tensor,
    opt_img: torch.optim.Optimizer,
    train: Split,
    rows: list[torch.Tensor],
    arch: str,
    ipc: int,
    batch_real: int,
    strategy: tuple[str, ...],
    g: torch.Generator,
    micro_batch: int | None = None,
) -> torch.Tensor:
    """One DM iteration: a fresh frozen random net; match per-class mean embeddings; one step.

    Loss = sum over classes of |mean embed(aug(real_c)) - mean embed(aug(syn_c))|^2, the same
    augmentation draw for both sides of a class. Returns the loss per class (on device).
    ``micro_batch`` embeds the real images of a per-sample net that many at a time (see
    :mod:`nas_proxy.microbatch`); a BatchNorm net embeds them all at once for its batch statistics.
    """
    classes = train.num_classes
    size = (images.shape[-2], images.shape[-1])
    net = fresh_net(arch, train, g)
    net.train()  # as the authors; only BatchNorm cares (batch statistics)
    net.requires_grad_(False)
    reals, syns = [], []
    for c in range(classes):
        aug = _siamese(strategy, size, g)
        reals.append(apply(train.images[draw_rows(rows[c], batch_real, g)], aug))
        syns.append(apply(images[c * ipc : (c + 1) * ipc], aug))
    with torch.no_grad():
        if _batchnorms(net):  # batch statistics over all classes at once, as the authors
            real_emb = torch.split(net.embed(torch.cat(reals)), [len(r) for r in reals])
            real_mean = torch.stack([e.mean(0) for e in real_emb])
        else:  # per-sample nets: class by class, in pieces: less memory, the same means up to rounding
            real_mean = torch.stack([_mean_embedding(net, r, micro_batch or batch_real) for r in reals])
    syn_mean = net.embed(torch.cat(syns)).view(classes, ipc, -1).mean(1)
    loss = ((real_mean - syn_mean) ** 2).sum()
    (images.grad,) = torch.autograd.grad(loss, [images])
    opt_img.step()
    return loss.detach() / classes


# ----------------------------------------------------------------------------- the resumable loop

CHECKPOINT_EVERY_S = 60.0
HISTORY_POINTS = 200  # loss history kept in the manifest: at most about this many points
_CHECKPOINT_KIND = "nas-proxy synthesis checkpoint v1"

# Test seam: called with the number of finished iterations after each one (may raise
# KeyboardInterrupt to simulate Ctrl-C). None in normal use.
_on_iteration: Callable[[int], None] | None = None


def _load_checkpoint(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise NasProxyError(f"{path}: unreadable checkpoint ({exc}); delete it to start over") from exc
    if not isinstance(ck, dict) or ck.get("kind") != _CHECKPOINT_KIND:
        raise NasProxyError(f"{path}: not a synthesis checkpoint; delete it or choose another output path")
    for field in ("method", "params", "dataset", "data"):
        saved, wanted = ck.get(field), key[field]
        if saved == wanted:
            continue
        if field == "params" and isinstance(saved, dict):
            changed = sorted(k for k in {*saved, *wanted} if saved.get(k) != wanted.get(k))
            what = ", ".join(f"{k} {saved.get(k)!r} in the checkpoint vs {wanted.get(k)!r} now" for k in changed)
        elif field == "data":
            what = "the training images are not the same"
        else:
            what = f"{saved!r} in the checkpoint vs {wanted!r} now"
        raise NasProxyError(
            f"{path}: checkpoint of another build (different {field}: {what}); delete it or choose another output path"
        )
    return ck


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A copy of the optimizer state (its momentum buffers are otherwise updated in place)."""
    return copy.deepcopy(opt.state_dict())


def run_synthesis(
    builder: ProxyBuilder,
    train: Split,
    ctx: BuildContext,
    images: torch.Tensor,
    opt: torch.optim.Optimizer,
    g: torch.Generator,
    iterations: int,
    step: Callable[[], torch.Tensor],
    extra: dict[str, Any],
) -> BuildResult:
    """Run ``step`` (one iteration; returns its loss on device) ``iterations`` times, resumably.

    ``images`` is the leaf that ``opt`` updates and ``g`` the one generator every random choice
    comes from; together with the iteration count they are the whole state, so saving them at an
    iteration boundary and restoring them gives the same remaining iterations, bit for bit.
    """
    key: dict[str, Any] = {}
    if ctx.checkpoint is not None:
        key = {"method": builder.name, "params": builder.params(), "dataset": train.dataset, "data": split_hash(train)}
    start_it, history = 0, []
    window = images.new_zeros(())  # loss summed since the last history point
    ck = _load_checkpoint(ctx.checkpoint, key) if ctx.checkpoint is not None else None
    if ck is not None:
        with torch.no_grad():
            images.copy_(ck["images"].to(images.device))
        opt.load_state_dict(ck["opt"])
        g.set_state(ck["gen"])
        start_it, history = int(ck["iteration"]), [list(p) for p in ck["history"]]
        window.fill_(float(ck["window"]))
        ctx.seconds_before = float(ck["seconds"])
    log_every = max(1, math.ceil(iterations / HISTORY_POINTS))
    started = time.perf_counter()

    def snapshot(it: int) -> dict[str, Any]:
        # Device-side copies only: the host reads them when (and only when) a checkpoint is written.
        return {
            "iteration": it,
            "images": images.detach().clone(),
            "opt": _optimizer_state(opt),
            "gen": g.get_state(),
            "history": [list(p) for p in history],
            "window": window.clone(),
        }

    def save(snap: dict[str, Any]) -> None:
        if ctx.checkpoint is None:
            return
        blob = {
            **key,
            "kind": _CHECKPOINT_KIND,
            **snap,
            "images": snap["images"].cpu(),
            "window": float(snap["window"]),
            "opt": _to_cpu(snap["opt"]),
            "seconds": ctx.seconds_before + time.perf_counter() - started,
        }
        save_torch_atomic(blob, ctx.checkpoint)

    bar = progress_bar(iterations, f"build {builder.name}", "it", enabled=ctx.progress, initial=start_it, leave=False)
    last_save = time.perf_counter()
    snap = snapshot(start_it)
    try:
        for it in range(start_it, iterations):
            snap = snapshot(it)  # the state a Ctrl-C during this iteration falls back to
            # After the first iteration, then every minute: a kill -9 loses at most one interval
            # (a first save only after a minute lost every iteration before it).
            if it == start_it + 1 or time.perf_counter() - last_save > CHECKPOINT_EVERY_S:
                save(snap)
                last_save = time.perf_counter()
            window += step()
            done = it + 1
            if done % log_every == 0 or done == iterations:
                count = done - (done - 1) // log_every * log_every  # iterations in this window
                value = float(window) / count  # the only host read of the loss
                if not math.isfinite(value):
                    raise NasProxyError(f"{builder.name}: matching loss became {value} at iteration {done}")
                history.append([done, round(value, 6)])
                window.zero_()
                bar.set_postfix(loss=f"{value:.4f}")
            bar.update(1)
            if _on_iteration is not None:
                _on_iteration(done)
        snap = snapshot(iterations)
        save(snap)
    except KeyboardInterrupt:
        save(snap)  # every finished iteration is kept; rerunning the same build resumes here
        raise
    finally:
        bar.close()
    labels = class_balanced_labels(train.num_classes, builder.ipc, images.device)
    return BuildResult(images.detach().clone(), labels, extra={**extra, "loss_history": history})


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------- builders


def _check_common(owner: str, init: str, arch: str, momentum: dict[str, float]) -> None:
    if init not in ("noise", "real"):
        raise NasProxyError(f"{owner}: init must be noise or real, got {init!r}")
    ArchSpec.from_id(arch)  # raises naming the bad token
    for name, value in momentum.items():
        if not 0 <= value < 1:
            raise NasProxyError(f"{owner}: {name} must be in [0, 1), got {value!r}")


REAL_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class DC(ProxyBuilder):
    """Dataset condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021).

    Defaults are the paper's (the ICLR-era code: net SGD momentum 0.5; noise init).
    ``outer_loop``/``inner_loop`` None take the reference table by ipc (:func:`default_loops`).
    ``arch`` is the matching network: any search-space id. ``real_dtype="bfloat16"`` runs the
    real images' forward and backward under bfloat16 autocast (the synthetic side stays float32):
    faster per iteration on a CPU with AVX512-BF16 (untested on GPUs), not float32-equal
    (``benchmarks/dc_step.py`` measures both; figures in results/benchmarks/README.md). ``micro_batch`` runs the real
    gradient that many images at a time (the same gradient up to float rounding); None picks
    micro-batches of a few MiB on a CPU and the whole batch on a GPU (:mod:`nas_proxy.microbatch`).
    """

    name: ClassVar[str] = "dc"
    iterations: int = 1000
    batch_real: int = 256
    outer_loop: int | None = None
    inner_loop: int | None = None
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    momentum_net: float = 0.5
    batch_train: int = 256
    init: Literal["noise", "real"] = "noise"
    distance: DistanceName = "ours"
    arch: str = DEFAULT_ARCH.id
    bn_real_per_class: int = 16
    real_dtype: Literal["float32", "bfloat16"] = "float32"
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.real_dtype not in REAL_DTYPES:
            raise NasProxyError(
                f"{self.name}: real_dtype must be one of {', '.join(REAL_DTYPES)}, got {self.real_dtype!r}"
            )
        for name in (
            "iterations",
            "batch_real",
            "outer_loop",
            "inner_loop",
            "batch_train",
            "bn_real_per_class",
            "micro_batch",
        ):
            value = getattr(self, name)
            if value is not None:
                check_positive_int(value, f"{self.name}: {name}")
        check_positive(self.lr_img, f"{self.name}: lr_img")
        check_positive(self.lr_net, f"{self.name}: lr_net")
        _check_common(
            self.name, self.init, self.arch, {"momentum_img": self.momentum_img, "momentum_net": self.momentum_net}
        )
        if self.distance not in DISTANCES:
            raise NasProxyError(f"{self.name}: unknown distance {self.distance!r}; valid: {', '.join(DISTANCES)}")

    def loops(self) -> tuple[int, int]:
        """(outer_loop, inner_loop) after filling None from the reference table."""
        outer, inner = default_loops(self.ipc)
        return (self.outer_loop or outer, self.inner_loop or inner)

    def augmentation(self, train: Split) -> tuple[str, ...]:
        """The siamese augmentation strategy: none for DC."""
        return ()

    def _build(self, train: Split, ctx: BuildContext) -> BuildResult:
        g = torch.Generator().manual_seed(self.seed)
        rows = class_rows(train)
        images = init_images(train, rows, self.ipc, self.init, g).requires_grad_(True)
        opt = torch.optim.SGD([images], lr=self.lr_img, momentum=self.momentum_img)
        outer, inner = self.loops()
        strategy = self.augmentation(train)
        spec = ArchSpec.from_id(self.arch)
        setup = MatchingSetup(
            self.arch,
            self.ipc,
            outer,
            inner,
            self.batch_real,
            self.batch_train,
            self.lr_net,
            self.momentum_net,
            self.distance,
            self.bn_real_per_class,
            strategy,
            self.real_dtype,
            self.micro_batch or micro_batch_size(spec, images.shape, self.batch_real, train.device),
        )
        extra = {
            "outer_loop": outer,
            "inner_loop": inner,
            "micro_batch": setup.micro_batch,
            "strategy": "_".join(strategy) or "none",
            "loss": "gradient distance per class and outer step",
        }

        def step() -> torch.Tensor:
            return gradient_matching_step(images, opt, train, rows, setup, g)

        return run_synthesis(self, train, ctx, images, opt, g, self.iterations, step, extra)


@dataclass(frozen=True)
class DSA(DC):
    """DC with differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

    ``strategy`` None picks by dataset (every transform; no flip for digits). Defaults follow
    the authors' DSA-era code and commands: real init, net SGD without momentum.
    """

    name: ClassVar[str] = "dsa"
    momentum_net: float = 0.0
    init: Literal["noise", "real"] = "real"
    strategy: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy is not None:
            parse_strategy(self.strategy)

    def augmentation(self, train: Split) -> tuple[str, ...]:
        return parse_strategy(self.strategy if self.strategy is not None else default_strategy(train.dataset))


@dataclass(frozen=True)
class DM(ProxyBuilder):
    """Dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

    Each iteration a fresh frozen random ``arch``; the loss is the squared distance between the
    per-class mean embeddings of ``batch_real`` augmented real images and of the augmented
    synthetic images. Defaults are the authors': image SGD lr 1.0 momentum 0.5, real init,
    20,000 iterations, the DSA strategy (``strategy`` None: by dataset; "none" turns it off).
    ``micro_batch`` as :class:`DC`'s: the real images are embedded in pieces of that many.
    """

    name: ClassVar[str] = "dm"
    iterations: int = 20000
    batch_real: int = 256
    lr_img: float = 1.0
    momentum_img: float = 0.5
    init: Literal["noise", "real"] = "real"
    arch: str = DEFAULT_ARCH.id
    strategy: str | None = None
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "batch_real", "micro_batch"):
            value = getattr(self, name)
            if value is None and name == "micro_batch":
                continue
            check_positive_int(value, f"{self.name}: {name}")
        check_positive(self.lr_img, f"{self.name}: lr_img")
        _check_common(self.name, self.init, self.arch, {"momentum_img": self.momentum_img})
        if self.strategy is not None:
            parse_strategy(self.strategy)

    def _build(self, train: Split, ctx: BuildContext) -> BuildResult:
        g = torch.Generator().manual_seed(self.seed)
        rows = class_rows(train)
        images = init_images(train, rows, self.ipc, self.init, g).requires_grad_(True)
        opt = torch.optim.SGD([images], lr=self.lr_img, momentum=self.momentum_img)
        strategy = parse_strategy(self.strategy if self.strategy is not None else default_strategy(train.dataset))
        size = (images.shape[-2], images.shape[-1])
        chunk = self.micro_batch or micro_batch_size(ArchSpec.from_id(self.arch), size, self.batch_real, train.device)
        extra = {
            "strategy": "_".join(strategy) or "none",
            "loss": "squared mean-embedding distance per class",
            "micro_batch": chunk,
        }

        def step() -> torch.Tensor:
            return distribution_matching_step(
                images, opt, train, rows, self.arch, self.ipc, self.batch_real, strategy, g, chunk
            )

        return run_synthesis(self, train, ctx, images, opt, g, self.iterations, step, extra)
