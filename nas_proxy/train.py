"""One flat training loop with the reference evaluation protocol, and accuracy().

Protocol (REFERENCE.md section 4): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
lr x0.1 once at half. Data is already on the device: a batch is an index into it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Split
from nas_proxy.device import on_cpu
from nas_proxy.errors import NasProxyError
from nas_proxy.microbatch import cross_entropy_backward, training_micro_batch
from nas_proxy.models import build_model, count_params
from nas_proxy.space import ArchSpec

# The keys a learning-curve point carries in a stored row (``nas_proxy.store.RunRow.curve``).
CURVE_KEYS: tuple[str, ...] = ("step", "epoch", "accuracy", "loss")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; ``max_steps`` caps SGD steps (early stopping).

    ``curve`` (epochs) and ``curve_steps`` (SGD steps) name the points of the run at which test
    accuracy and training loss are recorded on the way (a learning curve): one run gives every
    fidelity of a multi-fidelity table. Recording changes nothing in the training itself.
    """

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_at: float = 0.5
    max_steps: int | None = None
    curve: tuple[int, ...] = field(default=())
    curve_steps: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        # JSON gives lists back: keep the fields hashable tuples, sorted and unique.
        for name in ("curve", "curve_steps"):
            points = tuple(sorted({int(v) for v in getattr(self, name)}))
            if points and points[0] < 1:
                raise NasProxyError(f"{name} points must be at least 1, got {points[0]}")
            object.__setattr__(self, name, points)
        if self.epochs < 1:
            raise NasProxyError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise NasProxyError(f"batch size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            raise NasProxyError(f"learning rate must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise NasProxyError(f"max_steps must be at least 1, got {self.max_steps}")

    def total_steps(self, n: int) -> int:
        per_epoch = math.ceil(n / self.batch_size)
        steps = self.epochs * per_epoch
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def lr_at(self, step: int, total: int) -> float:
        """The step's learning rate: ``lr``, times 0.1 from ``decay_at`` of the run on."""
        boundary = int(total * self.decay_at)
        return self.lr * 0.1 if 0 < boundary <= step else self.lr

    def record_steps(self, n: int) -> list[int]:
        """The steps (1-based, at most the run's total) after which a curve point is recorded."""
        per_epoch, total = math.ceil(n / self.batch_size), self.total_steps(n)
        points = {e * per_epoch for e in self.curve} | set(self.curve_steps)
        return sorted(p for p in points if p <= total)

    def without_curve(self) -> TrainConfig:
        """The same training with nothing recorded on the way (the runs are the same runs)."""
        return TrainConfig(**{**self.fields(), "curve": (), "curve_steps": ()})

    def fields(self) -> dict[str, Any]:
        """The settings as plain JSON values (what the protocol file stores)."""
        data = asdict(self)
        for name in ("curve", "curve_steps"):
            data[name] = list(data[name])
        return data

    @property
    def hash(self) -> str:
        """Short content hash: results trained under another protocol never mix.

        Empty curve fields are left out, so a config without a curve keeps the hash it had before
        curves existed (old stores resume); with one, rows carry curves and get their own key.
        """
        data = self.fields()
        for name in ("curve", "curve_steps"):
            if not data[name]:
                del data[name]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def parse_curve(text: str, epochs: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``"1,2,4,8"``, ``"ladder"`` (1, 2, 4, ..., epochs), ``"every"`` or ``"100s,500s"`` (steps) -> (epochs, steps).

    Items combine: ``"ladder,100s,500s"``. An empty text records nothing.
    """
    ep: set[int] = set()
    st: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item or item == "none":
            continue
        if item == "every":
            ep.update(range(1, epochs + 1))
        elif item == "ladder":
            ep.update(ladder(epochs))
        else:
            try:
                value = int(item[:-1]) if item.endswith("s") else int(item)
            except ValueError:
                raise NasProxyError(
                    f"bad curve point {raw.strip()!r}; valid: epochs (4), steps (100s), 'ladder', 'every'"
                ) from None
            if value < 1:
                raise NasProxyError(f"curve points must be at least 1, got {raw.strip()!r}")
            (st if item.endswith("s") else ep).add(value)
    late = sorted(e for e in ep if e > epochs)
    if late:
        raise NasProxyError(f"curve epoch {late[0]} is past the run's {epochs} epochs")
    return tuple(sorted(ep)), tuple(sorted(st))


def ladder(epochs: int) -> list[int]:
    """1, 2, 4, 8, ... up to ``epochs``, and ``epochs`` itself."""
    out, e = [], 1
    while e < epochs:
        out.append(e)
        e *= 2
    return [*out, epochs]


@dataclass(frozen=True)
class TrainStats:
    steps: int
    seconds: float
    final_loss: float
    diverged: bool


EpochCallback = Callable[[int, nn.Module], None]
# (step, model, mean training loss since the previous point): a learning-curve point is due.
RecordCallback = Callable[[int, nn.Module, float], None]


def train_model(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    seed: int,
    *,
    on_epoch: EpochCallback | None = None,
    on_record: RecordCallback | None = None,
    micro_batch_bytes: int | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``train`` (already on the model's device).

    On a CPU a batch of a net without batch statistics runs in micro-batches of a few MiB
    (:mod:`nas_proxy.microbatch`): the plain loop's gradient up to float rounding, faster from
    width 16 up (figures in results/benchmarks/README.md); narrow nets on a 100-image proxy run
    whole batches, as the plain loop.

    Stops early and reports ``diverged`` when the loss turns non-finite. The finiteness check
    runs once an epoch so a GPU never waits on the host inside the loop. ``on_epoch(epoch,
    model)`` may raise (an Optuna pruner does) to stop the run. ``on_record(step, model, loss)``
    runs after each of ``config.record_steps`` (the learning curve's points) with the mean
    training loss since the previous point; it must leave the model as it found it.
    ``micro_batch_bytes``: the micro-batch budget (default :data:`nas_proxy.microbatch.MICRO_BATCH_BYTES`;
    an execution plan's worker processes pass a larger one).
    """
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(train)
    total = config.total_steps(n)
    points = set(config.record_steps(n)) if on_record is not None else set()
    since, since_steps = torch.zeros((), device=train.device), 0
    g = torch.Generator().manual_seed(seed)  # batch order: CPU generator, same on every device
    start = time.perf_counter()
    step, epoch, last = 0, 0, torch.zeros((), device=train.device)
    model.train()
    while step < total:
        order = torch.randperm(n, generator=g).to(train.device, non_blocking=True)
        epoch_loss = torch.zeros((), device=train.device)
        for i in range(0, n, config.batch_size):
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step, total)
            idx = order[i : i + config.batch_size]
            x = train.images[idx]
            opt.zero_grad(set_to_none=True)
            # On a CPU a wide batch runs in micro-batches of a few MiB: the same gradient, up to rounding.
            micro = training_micro_batch(model, x, micro_batch_bytes)
            loss = cross_entropy_backward(model, x, train.labels[idx], micro)
            opt.step()
            epoch_loss += loss
            last = loss
            step += 1
            if points:
                since += loss.detach()
                since_steps += 1
                if step in points:
                    on_record(step, model, float(since) / since_steps)  # type: ignore[misc]
                    since, since_steps = torch.zeros((), device=train.device), 0
            if step >= total:
                break
        epoch += 1
        if not torch.isfinite(epoch_loss):
            return TrainStats(step, time.perf_counter() - start, float("nan"), True)
        if on_epoch is not None:
            on_epoch(epoch, model)
    return TrainStats(step, time.perf_counter() - start, float(last), False)


# Test images per forward on a CPU: enough to keep the widest activation about this many bytes,
# i.e. in cache: faster than batches of 2048 on the project's CPU over eight ConvNets (widths 4 to
# 128, every norm; figures in results/benchmarks/README.md), the same logits bit for bit (each
# image's output does not depend on its batch in eval mode).
CPU_EVAL_BYTES = 8 * 1024 * 1024


# On an accelerator: big launches, but bounded, since a stacked group of 15 wide nets at 2048
# images would need 30 GB for one activation.
GPU_EVAL_BYTES = 1 << 30


def eval_batch_size(split: Split, channels: int) -> int:
    """Test images per forward for a net whose widest layer has ``channels`` maps of the input size.

    A power of two from 16 to 2048 that keeps one such activation within :data:`CPU_EVAL_BYTES`
    on a CPU (in cache) or :data:`GPU_EVAL_BYTES` elsewhere (2048 for every single convnet720 net
    up to width 128, 1024 at width 256).
    """
    budget = CPU_EVAL_BYTES if on_cpu(split.device) else GPU_EVAL_BYTES
    per_image = max(1, channels) * split.image_size**2 * split.images.element_size()
    fits = max(1, budget // per_image)
    return int(min(2048, max(16, 2 ** (fits.bit_length() - 1))))


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int | None = None) -> float:
    """Top-1 accuracy in [0, 1], in eval mode (BatchNorm uses running statistics).

    ``batch_size``: test images per forward (default :func:`eval_batch_size` for the net's width).
    """
    if batch_size is None:
        spec = getattr(model, "spec", None)
        batch_size = eval_batch_size(split, spec.width if isinstance(spec, ArchSpec) else 256)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split.device)
    for i in range(0, len(split), batch_size):
        pred = model(split.images[i : i + batch_size]).argmax(1)
        correct += (pred == split.labels[i : i + batch_size]).sum()
    model.train(was_training)
    return float(correct) / max(len(split), 1)


@dataclass(frozen=True)
class RunOutcome:
    """What one training run of one architecture produced."""

    accuracy: float
    seconds: float
    steps: int
    params: int
    status: str  # "ok" | "diverged"
    curve: tuple[dict[str, Any], ...] = ()  # learning-curve points, keys CURVE_KEYS


def curve_point(step: int, per_epoch: int, accuracy: float, loss: float) -> dict[str, Any]:
    """One learning-curve point; a non-finite accuracy or loss (divergence) is None."""
    return {
        "step": int(step),
        "epoch": round(step / per_epoch, 4),
        "accuracy": float(accuracy) if math.isfinite(accuracy) else None,
        "loss": round(float(loss), 6) if math.isfinite(loss) else None,
    }


def curve_recorder(test: Split, n: int, config: TrainConfig) -> tuple[list[dict[str, Any]], RecordCallback]:
    """A list that fills with curve points, and the ``on_record`` callback that fills it."""
    points: list[dict[str, Any]] = []
    per_epoch = math.ceil(n / config.batch_size)

    def record(step: int, model: nn.Module, loss: float) -> None:
        acc = accuracy(model, test) if math.isfinite(loss) else math.nan
        points.append(curve_point(step, per_epoch, acc, loss))

    return points, record


def train_and_evaluate(
    spec: ArchSpec | str,
    train: Split,
    test: Split,
    config: TrainConfig,
    seed: int,
    *,
    on_epoch: EpochCallback | None = None,
    micro_batch_bytes: int | None = None,
) -> RunOutcome:
    """Build a fresh net (weights from ``seed``), train it, and return its test accuracy.

    With curve points in ``config``, the outcome carries the learning curve; ``seconds`` is the
    training time without the curve's test passes. ``micro_batch_bytes``: see :func:`train_model`.
    """
    model = build_model(spec, train.in_channels, train.image_size, train.num_classes, seed=seed).to(train.device)
    curve, record = curve_recorder(test, len(train), config)
    timed = _timed(record)
    recorder = timed if curve_wanted(config) else None
    stats = train_model(
        model, train, config, seed, on_epoch=on_epoch, on_record=recorder, micro_batch_bytes=micro_batch_bytes
    )
    seconds = stats.seconds - timed.spent
    out = RunOutcome(float("nan"), seconds, stats.steps, count_params(model), "diverged", tuple(curve))
    if stats.diverged:
        return out
    return RunOutcome(accuracy(model, test), seconds, stats.steps, out.params, "ok", tuple(curve))


def curve_wanted(config: TrainConfig) -> bool:
    return bool(config.curve or config.curve_steps)


class _timed:
    """Wraps a record callback and sums the seconds it takes (kept out of the run's training time)."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn, self.spent = fn, 0.0

    def __call__(self, *args: Any) -> None:
        start = time.perf_counter()
        self.fn(*args)
        self.spent += time.perf_counter() - start
