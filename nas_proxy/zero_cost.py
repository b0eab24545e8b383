"""Zero-cost rankers: score an untrained network from one minibatch, no training at all.

What a NAS user would pick instead of proxy data (REFERENCE.md section 6). Every ranker is a pure
function ``(model, images, labels) -> float`` and **higher always means "predicted more
accurate"**; each docstring states the sign convention. Rankers never touch the model they are
given: the ones that run forward/backward passes work on a deep copy, so parameters, ``.grad``,
BatchNorm running statistics and the train/eval flag are left as they were.

The gradient-based rankers follow the zero-cost-NAS reference code (Abdelfattah et al., ICLR
2021, ``foresight/pruners/measures``): saliencies are taken over the *weights of conv and linear
layers* (biases and norm affines are left out), summed over layers; the loss is mean
cross-entropy over the batch; the copy runs in train mode (BatchNorm uses batch statistics),
except synflow, which uses eval mode (see :func:`synflow`).

A ranker may raise (an architecture it cannot handle) or find a non-finite value; a raw ranker
never returns ``inf`` or ``nan``: it raises :class:`ScoreOverflowError` instead. The safe layer
(:func:`score_model`, :func:`score_arch`, :func:`score_space`) turns either into a
:class:`RankerScore` with ``score=nan`` and status ``'overflow'`` or ``'failed'`` for that one
candidate, and the run goes on.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.log import progress_bar
from nas_proxy.models import ConvNet, build_model, count_flops, count_params
from nas_proxy.space import ArchSpec

Ranker = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
Status = Literal["ok", "failed", "overflow"]

# Layers whose weights carry the per-weight saliencies (the reference code's "prunable" layers).
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Modules NASWOT reads binary codes from. For every one of them the code of a unit is
# "pre-activation > 0": exactly the ReLU on/off pattern of Mellor et al.; for LeakyReLU the same
# linear region; for saturating units (Sigmoid, Tanh) the upper half of the curve. Functional
# activations (F.relu inside forward) are invisible to hooks and so not counted.
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
)

# Mellor et al.'s regulariser in the jacob_cov score (and the reference code's value).
JACOB_COV_K = 1e-5

# The zero-cost score combined with a proxy set's accuracy in :func:`rank_average`, fixed in
# advance from the literature, never from our ground truth. synflow because (1) it is the most
# consistent zero-cost proxy across search spaces and tasks in Abdelfattah et al. 2021 (Spearman
# 0.74 on NAS-Bench-201 CIFAR-10, the best of their set) and in NAS-Bench-Suite-Zero (Krishnakumar
# et al. 2022); (2) it is data-free (all-ones input), so it brings information a tiny proxy set
# cannot, which is the point of combining; (3) NASWOT is defined on ReLU codes, and a third of
# our space is sigmoid, where its codes are our extension rather than the published method.
DEFAULT_COMBINED_RANKER = "synflow"


class ScoreOverflowError(ArithmeticError):
    """A ranker met a non-finite value (overflow, or a NaN loss): that candidate gets status 'overflow'."""


# ----------------------------------------------------------------------------- helpers


def _fresh_copy(model: nn.Module, *, train: bool) -> nn.Module:
    """A deep copy with no gradients, in train or eval mode: the caller's model stays untouched."""
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.grad = None
        p.requires_grad_(True)
    return clone.train(train)


def _prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE) and isinstance(m.weight, torch.Tensor)]
    if not weights:
        raise ValueError(f"{type(model).__name__} has no conv or linear layer to score")
    return weights


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ScoreOverflowError(f"{what} is {value}")
    return value


def _loss_grads(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(weights, grads) of mean cross-entropy for the conv/linear weights of a fresh train-mode copy."""
    clone = _fresh_copy(model, train=True)
    weights = _prunable_weights(clone)
    loss = F.cross_entropy(clone(images), labels)
    _finite(float(loss.detach()), "the cross-entropy loss")
    grads = list(torch.autograd.grad(loss, weights, allow_unused=True))
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads, strict=True)]
    return weights, grads


# ----------------------------------------------------------------------------- rankers


def params(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Number of parameters. Higher = better: bigger nets of one family tend to be more accurate."""
    return float(count_params(model))


def module_flops(model: nn.Module, sample: torch.Tensor) -> int:
    """Forward FLOPs of one image measured with hooks, counted like :func:`nas_proxy.models.count_flops`.

    Multiply-add = 2: conv and linear 2 x MACs (+ one per output for a bias); norms 4 per element;
    activations 1 per element; pools 1 per input element. Other modules count 0.
    """
    clone = copy.deepcopy(model).eval()
    total = 0
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    pools = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        out = output.numel()
        if isinstance(module, nn.modules.conv._ConvNd):
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2 * out * fan_in + (out if module.bias is not None else 0)
        elif isinstance(module, nn.Linear):
            total += 2 * out * module.in_features + (out if module.bias is not None else 0)
        elif isinstance(module, norms):
            total += 4 * out
        elif isinstance(module, ACTIVATION_MODULES):
            total += out
        elif isinstance(module, pools):
            total += inputs[0].numel()

    handles = [m.register_forward_hook(hook) for m in clone.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            clone(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Forward FLOPs of one image. Higher = better (more compute, usually more accuracy).

    A :class:`~nas_proxy.models.ConvNet` uses the exact shape formula
    :func:`~nas_proxy.models.count_flops`; any other module is measured with :func:`module_flops`.
    """
    if isinstance(model, ConvNet):
        return float(count_flops(model.spec, images.shape[1], images.shape[-1], model.classifier.out_features))
    return float(module_flops(model, images))


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over conv/linear layers of the L2 norm of the weight gradient of mean cross-entropy.

    Higher = better (Abdelfattah et al. 2021 use the raw value; larger gradients at init train faster).
    """
    _, grads = _loss_grads(model, images, labels)
    return _finite(sum(float(g.double().norm()) for g in grads), "grad_norm")


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SNIP (Lee et al. 2019): sum of |dL/dw * w| over conv/linear weights. Higher = better.

    The reference code takes the gradient of a multiplicative mask at 1, which is the same value.
    """
    weights, grads = _loss_grads(model, images, labels)
    total = sum(float((g.double() * w.detach().double()).abs().sum()) for w, g in zip(weights, grads, strict=True))
    return _finite(total, "snip")


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SynFlow (Tanaka et al. 2020): sum of |w * dR/dw| with R = sum of outputs. Higher = better.

    As the zero-cost-NAS reference code: on a copy with every state entry replaced by its absolute
    value (the caller's model keeps its signs, no restore needed), one all-ones input of the batch's
    image shape, conv/linear weights only. Data-free: ``images`` gives only the shape, ``labels``
    is unused. BatchNorm: the copy runs in eval mode, so BN is the affine map of its running
    statistics; for a fresh net (mean 0, var 1, weight 1, bias 0) that is x / sqrt(1 + eps),
    i.e. the BN-free copy the reference code scores. Group/Layer/InstanceNorm act per sample.

    Overflow fix: with absolute weights R grows like the product of the layers' weight sums and
    can exceed float32's 3.4e38 for deep/wide nets, so the copy, the input and the backward pass
    run in float64 (range 1.8e308, as the reference code does). A net that overflows even float64
    raises :class:`ScoreOverflowError` (status 'overflow'). Measured on convnet720 (1x28x28,
    PyTorch's default init): the largest score is 2.2e8 (D4 W256, no pool), so float32 would not
    overflow there; float64 is the guard for deeper nets, larger inputs and other inits.
    """
    clone = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for value in clone.state_dict().values():
            if value.is_floating_point():
                value.abs_()
    for p in clone.parameters():
        p.grad = None
        p.requires_grad_(True)
    weights = _prunable_weights(clone)
    ones = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
    r = clone(ones).sum()
    _finite(float(r.detach()), "synflow's R (sum of outputs, float64)")
    grads = torch.autograd.grad(r, weights, allow_unused=True)
    total = sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads, strict=True) if g is not None)
    return _finite(total, "synflow")


def jacob_cov(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Jacobian covariance (Mellor et al., NASWOT v1). Higher = better (less correlated Jacobians).

    As the reference code: J_i = d(sum of outputs)/d(input i) on a train-mode copy, flattened;
    C = correlation matrix of the rows J_i (float64); score = -sum(log(v + k) + 1/(v + k)) over
    C's eigenvalues v, k = 1e-5. Eigenvalues come from ``eigvalsh`` (C is symmetric) and are
    clamped at 0: round-off can make a PSD matrix's smallest ones slightly negative. A constant
    Jacobian row (zero variance) has no correlation and raises.
    """
    clone = _fresh_copy(model, train=True)
    x = images.detach().clone().requires_grad_(True)
    y = clone(x)
    (jac,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))
    rows = jac.reshape(jac.shape[0], -1).double()
    if not bool(torch.isfinite(rows).all()):
        raise ScoreOverflowError("jacob_cov: the input Jacobian is not finite")
    if rows.shape[0] == 1:
        corr = torch.ones(1, 1, dtype=torch.float64)
    else:
        centred = rows - rows.mean(dim=1, keepdim=True)
        norms = centred.norm(dim=1)
        if bool((norms == 0).any()):
            raise ValueError("jacob_cov: an image's input Jacobian is constant, so its correlation is undefined")
        unit = centred / norms[:, None]
        corr = (unit @ unit.T).cpu()
    v = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    score = -float((torch.log(v + JACOB_COV_K) + 1.0 / (v + JACOB_COV_K)).sum())
    return _finite(score, "jacob_cov")


def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021, v2): log-determinant of the activation-overlap kernel. Higher = better.

    For every activation module (:data:`ACTIVATION_MODULES`, hooked *before* it runs, so in-place
    ReLUs are read correctly) each unit's binary code is ``pre-activation > 0``. With codes
    c (batch x units) K = c c^T + (1 - c)(1 - c)^T, i.e. K_ij = number of units on which images
    i and j agree, summed over all layers (float64). Score = log|K| from ``slogdet``. A singular K
    (two images with identical codes everywhere) raises: its log-determinant is -inf.
    """
    clone = _fresh_copy(model, train=True)
    n = images.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=images.device)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal kernel
        codes = (inputs[0].detach().reshape(n, -1) > 0).float()
        on = codes.sum(dim=1, dtype=torch.float64)
        # (1-c)(1-c)^T = units - on_i - on_j + c c^T: one matmul instead of two, no (1 - c) copy.
        # float32 0/1 products sum exactly up to 2^24 units per layer; accumulate in float64.
        agree = 2.0 * (codes @ codes.T).double() - on[:, None] - on[None, :] + codes.shape[1]
        kernel = kernel + agree

    handles = [m.register_forward_pre_hook(hook) for m in clone.modules() if isinstance(m, ACTIVATION_MODULES)]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no activation module for NASWOT to read codes from")
    try:
        with torch.no_grad():
            clone(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel.cpu())
    if float(sign) <= 0:
        raise ValueError("naswot: the activation kernel is singular (two images share every activation code)")
    return _finite(float(logdet), "naswot")


# ----------------------------------------------------------------------------- registry

RANKERS: dict[str, Ranker] = {
    "params": params,
    "flops": flops,
    "grad_norm": grad_norm,
    "snip": snip,
    "synflow": synflow,
    "jacob_cov": jacob_cov,
    "naswot": naswot,
}


def list_rankers() -> list[str]:
    """Registered ranker names, in table order."""
    return list(RANKERS)


def get_ranker(name: str) -> Ranker:
    """The ranker function for ``name``; unknown names raise listing the valid ones."""
    try:
        return RANKERS[name]
    except KeyError:
        raise UnknownNameError("ranker", name, list_rankers()) from None


def parse_rankers(text: str | Iterable[str]) -> list[str]:
    """``"all"`` or a comma list (``"synflow,naswot"``) -> validated names, duplicates dropped, order kept.

    The one parser of ranker names (``evaluate --rankers``, the demo, :func:`score_space`). Input
    that names nothing (``""``, ``" , "``, ``[]``) raises listing the valid names: a caller that
    wants no rankers passes none and does not call this.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise NasProxyError(f"no ranker given; use 'all' or a comma list of: {', '.join(list_rankers())}")
    if names == ["all"]:
        return list_rankers()
    for name in names:
        get_ranker(name)
    return list(dict.fromkeys(names))


def baseline_scores(
    arch_ids: Sequence[str], in_channels: int, image_size: int, num_classes: int
) -> dict[str, pd.Series]:
    """The rankers that need neither data nor training, :func:`params` and :func:`flops`, over ids.

    The report's params/flops columns when a store holds no scores of its own. Counted on the
    meta device: exact shapes of every layer, no memory, no initialisation.
    """
    scores: dict[str, dict[str, float]] = {"params": {}, "flops": {}}
    for arch in arch_ids:
        with torch.device("meta"):
            model = build_model(arch, in_channels, image_size, num_classes)
            sample = torch.empty(1, in_channels, image_size, image_size)
        labels = torch.empty(1, dtype=torch.long, device="meta")
        for name, values in scores.items():
            values[arch] = RANKERS[name](model, sample, labels)
    return {name: pd.Series(values, name=name) for name, values in scores.items()}


# ----------------------------------------------------------------------------- safe scoring


@dataclass(frozen=True)
class RankerScore:
    """One ranker on one candidate. ``score`` is NaN unless ``status == 'ok'``; ``reason`` says why.

    ``seconds`` is the ranker's own time (model construction excluded: every method pays it).
    """

    ranker: str
    arch_id: str
    score: float
    seconds: float
    status: Status = "ok"
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def score_model(
    name: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, arch_id: str = ""
) -> RankerScore:
    """Run ranker ``name`` on ``model`` and never raise for the candidate's sake.

    Overflow / non-finite values -> status 'overflow'; any other exception -> 'failed' with the
    exception as reason; both with score NaN. Unknown ranker names and Ctrl-C still raise.
    """
    ranker = get_ranker(name)
    start = time.perf_counter()
    status: Status = "ok"
    reason = ""
    try:
        score = float(ranker(model, images, labels))
        if not math.isfinite(score):  # a user-registered ranker might return inf/nan
            raise ScoreOverflowError(f"{name} returned {score}")
    except ScoreOverflowError as exc:
        score, status, reason = math.nan, "overflow", str(exc)
    except Exception as exc:  # one candidate's failure must not end the run
        score, status, reason = math.nan, "failed", f"{type(exc).__name__}: {exc}"
    _sync(images.device)
    seconds = time.perf_counter() - start
    return RankerScore(name, arch_id, score, seconds, status, reason)


def _build(spec: ArchSpec | str, images: torch.Tensor, num_classes: int, seed: int) -> nn.Module:
    model = build_model(spec, int(images.shape[1]), int(images.shape[-1]), num_classes, seed=seed)
    return model.to(images.device)


def _arch_id(spec: ArchSpec | str) -> str:
    return spec if isinstance(spec, str) else spec.id


def score_arch(
    name: str,
    spec: ArchSpec | str,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    seed: int,
) -> RankerScore:
    """Build ``spec`` with ``build_model(..., seed=seed)`` on the batch's device and score it.

    Deterministic for a seed (on CPU; CUDA kernels may differ in the last bits). A spec that
    cannot be built (e.g. too many pools for the image size) gives status 'failed'.
    """
    get_ranker(name)
    arch_id = _arch_id(spec)
    try:
        model = _build(spec, images, num_classes, seed)
    except Exception as exc:
        return RankerScore(name, arch_id, math.nan, 0.0, "failed", f"{type(exc).__name__}: {exc}")
    return score_model(name, model, images, labels, arch_id=arch_id)


def score_space(
    names: str | Sequence[str],
    specs: Iterable[ArchSpec | str],
    batch: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    seed: int,
    progress: bool = True,
    *,
    skip: Collection[tuple[str, str]] = (),
    on_result: Callable[[RankerScore], None] | None = None,
) -> list[RankerScore]:
    """Every ranker in ``names`` on every spec; one model per spec (seeded), shared by its rankers.

    ``names`` may be a list or a ``parse_rankers`` string. Resumable: ``(ranker, arch_id)`` pairs in
    ``skip`` are not recomputed, and ``on_result`` sees each score as soon as it exists (append it
    to a results file there), so a Ctrl-C loses at most the candidate in flight. Returns the new
    scores in (spec, ranker) order. A tqdm bar shows rate and ETA when ``progress`` (log lines outside a terminal).
    """
    rankers = parse_rankers(names)
    images, labels = batch
    todo = [(s, [r for r in rankers if (r, _arch_id(s)) not in skip]) for s in specs]
    todo = [(s, rs) for s, rs in todo if rs]
    results: list[RankerScore] = []
    total = sum(len(rs) for _, rs in todo)
    with progress_bar(total, "zero-cost", "score", enabled=progress) as bar:
        for spec, pending in todo:
            arch_id = _arch_id(spec)
            try:
                model: nn.Module | None = _build(spec, images, num_classes, seed)
                build_error = ""
            except Exception as exc:
                model, build_error = None, f"{type(exc).__name__}: {exc}"
            for name in pending:
                bar.set_postfix_str(f"{name} {arch_id}", refresh=False)
                if model is None:
                    result = RankerScore(name, arch_id, math.nan, 0.0, "failed", build_error)
                else:
                    result = score_model(name, model, images, labels, arch_id=arch_id)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update(1)
            del model
    return results


def ranker_batch(train: Split, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training images and labels for the rankers, seeded and class-stratified.

    Classes take turns (in a seeded order) giving one random image each, so counts differ by at
    most one between classes; a class that runs out drops out of the rotation. Stays on the
    split's device.
    """
    if not 1 <= size <= len(train):
        raise NasProxyError(f"ranker batch size must be between 1 and {len(train)}, got {size}")
    g = torch.Generator().manual_seed(seed)
    labels = train.labels.cpu()
    pools: list[list[int]] = []
    for c in torch.randperm(train.num_classes, generator=g).tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members):
            pools.append(members[torch.randperm(len(members), generator=g)].tolist())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        for pool in pools:
            if depth < len(pool) and len(chosen) < size:
                chosen.append(pool[depth])
        depth += 1
    idx = torch.tensor(chosen, dtype=torch.long, device=train.labels.device)
    return train.images[idx], train.labels[idx]


# ----------------------------------------------------------------------------- combining


def rank_average(scores_a: dict[str, float], scores_b: dict[str, float]) -> dict[str, float]:
    """Mean of the two rankings (1 = worst, ties get their average rank): a combined ranker.

    Both rankings are taken over the candidates where *both* scores are finite, so they share one
    scale; a candidate that is missing or NaN in either gets NaN (it stays marked, it never
    shifts the others' ranks). Higher = better, like every ranker. Keys: the union of both.
    """
    keys = list(dict.fromkeys([*scores_a, *scores_b]))
    both = [k for k in keys if math.isfinite(scores_a.get(k, math.nan)) and math.isfinite(scores_b.get(k, math.nan))]
    out = dict.fromkeys(keys, math.nan)
    if both:
        ra = rankdata(np.array([scores_a[k] for k in both], dtype=np.float64))
        rb = rankdata(np.array([scores_b[k] for k in both], dtype=np.float64))
        out.update({k: float((a + b) / 2.0) for k, a, b in zip(both, ra, rb, strict=True)})
    return out
