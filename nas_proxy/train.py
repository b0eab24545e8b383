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
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError
from nas_proxy.microbatch import cross_entropy_backward, training_micro_batch
from nas_proxy.models import build_model, count_params
from nas_proxy.space import ArchSpec


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run; ``max_steps`` caps SGD steps (early stopping)."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_at: float = 0.5
    max_steps: int | None = None

    def __post_init__(self) -> None:
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

    @property
    def hash(self) -> str:
        """Short content hash: results trained under another protocol never mix."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class TrainStats:
    steps: int
    seconds: float
    final_loss: float
    diverged: bool


EpochCallback = Callable[[int, nn.Module], None]


def train_model(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    seed: int,
    *,
    on_epoch: EpochCallback | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``train`` (already on the model's device).

    On a CPU a batch of a net without batch statistics runs in micro-batches of a few MiB
    (:mod:`nas_proxy.microbatch`): the plain loop's gradient up to float rounding, 1.2-2x faster
    from width 16 up; narrow nets on a 100-image proxy run whole batches, as the plain loop.

    Stops early and reports ``diverged`` when the loss turns non-finite. The finiteness check
    runs once an epoch so a GPU never waits on the host inside the loop. ``on_epoch(epoch,
    model)`` may raise (an Optuna pruner does) to stop the run.
    """
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(train)
    total = config.total_steps(n)
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
            loss = cross_entropy_backward(model, x, train.labels[idx], training_micro_batch(model, x))
            opt.step()
            epoch_loss += loss
            last = loss
            step += 1
            if step >= total:
                break
        epoch += 1
        if not torch.isfinite(epoch_loss):
            return TrainStats(step, time.perf_counter() - start, float("nan"), True)
        if on_epoch is not None:
            on_epoch(epoch, model)
    return TrainStats(step, time.perf_counter() - start, float(last), False)


# Test images per forward on a CPU: enough to keep the widest activation about this many bytes,
# i.e. in cache. Measured on the project's CPU against batches of 2048: 1.8-3.2x faster over eight
# ConvNets (widths 4 to 128, every norm), the same logits bit for bit (each image's output does not
# depend on its batch in eval mode).
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
    budget = CPU_EVAL_BYTES if split.device.type == "cpu" else GPU_EVAL_BYTES
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


def train_and_evaluate(
    spec: ArchSpec | str,
    train: Split,
    test: Split,
    config: TrainConfig,
    seed: int,
    *,
    on_epoch: EpochCallback | None = None,
) -> RunOutcome:
    """Build a fresh net (weights from ``seed``), train it, and return its test accuracy."""
    model = build_model(spec, train.in_channels, train.image_size, train.num_classes, seed=seed).to(train.device)
    stats = train_model(model, train, config, seed, on_epoch=on_epoch)
    if stats.diverged:
        return RunOutcome(float("nan"), stats.seconds, stats.steps, count_params(model), "diverged")
    return RunOutcome(accuracy(model, test), stats.seconds, stats.steps, count_params(model), "ok")
