"""Micro-batches: one batch's gradient computed a few MiB of activations at a time on a CPU.

On Linux, glibc serves each large tensor with a fresh ``mmap`` and returns it to the OS when freed,
so every training step of a wide net faults in hundreds of MB of zeroed pages: at
ConvNet-D3-W128 a batch of 256 Fashion-MNIST images has 103 MB per first-block activation, and
with the default allocator the page faults took a large share of the step (against glibc's mmap
turned off). Pieces whose widest activation is a few MiB stay in memory the allocator reuses.
Their summed gradients are the batch's gradient up to float rounding, and peak memory drops with
them. On the project's CPU a training step got faster from width 8 to 256, and so did DC's real
gradient (the figures are in results/benchmarks/README.md). A user's process keeps its allocator
settings; this needs none. Our own worker processes raise glibc's mmap threshold instead
(:func:`keep_freed_memory`), and their pieces may then be larger: the execution plan
(:mod:`nas_proxy.plan`) says which budget a run gets, so a run's float rounding follows from its
plan, never from what the process did before.

Only nets whose layers treat images independently may be split: BatchNorm in training mode
normalises with its batch's statistics, so such batches stay whole (:func:`splittable`). A GPU
has its own caching allocator and wants the largest launches, so there a batch stays whole too.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy.device import on_cpu
from nas_proxy.space import ArchSpec

# The widest activation of one micro-batch. 4 MiB was the fastest budget measured over widths
# 8-256 with glibc's default allocator (8 MiB pieces were slower at W32: glibc's dynamic mmap
# threshold does not always cover them; smaller ones add per-call overhead). The figures behind
# this and the next budget are in results/benchmarks/README.md.
MICRO_BATCH_BYTES = 4 << 20
# The same in a process that keeps its freed memory: pieces up to 16 MiB cost the same there from
# width 8 to 256 (one thread, batch 256), and stacked narrow nets run whole batches again (a
# worker's 5 stacked ConvNet-D3-W8 on 100 images step faster whole than in 4 MiB pieces). 32 MiB
# pieces reach glibc's mmap threshold again and are slower.
KEPT_MEMORY_MICRO_BATCH_BYTES = 16 << 20


def keep_freed_memory() -> None:
    """Stop glibc from handing activation buffers back to the OS after every step (Linux only).

    A narrow net's activations are a few MB each: above glibc's mmap threshold, so every step maps
    fresh pages and faults them in, zeroed, which costs as much as the arithmetic (seen as slow
    ``threshold_backward`` and ``fill_`` in a profile). Worker processes are ours to tune (the
    evaluator's and ``plan.train_many``'s); a user's own process is left alone. The plans of such
    workers give their runs micro-batches of up to :data:`KEPT_MEMORY_MICRO_BATCH_BYTES`; this
    function only makes them fast and changes no result.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)


def splittable(spec: ArchSpec | None) -> bool:
    """Whether a training batch of this net may be split: no batch statistics (not BatchNorm)."""
    return spec is not None and spec.norm != "batchnorm"


def micro_batch_size(
    spec: ArchSpec,
    image_size: Sequence[int],
    batch: int,
    device: torch.device,
    *,
    models: int = 1,
    budget: int | None = None,
) -> int:
    """Images per micro-batch: the whole ``batch`` off a CPU, else a piece of ``budget`` bytes
    (default :data:`MICRO_BATCH_BYTES`; a plan's workers pass :data:`KEPT_MEMORY_MICRO_BATCH_BYTES`).

    The widest activation is the first block's, before pooling: ``models x width x H x W`` float32
    values an image (``models`` nets stacked side by side).
    """
    if not on_cpu(device):
        return batch
    per_image = models * spec.width * int(image_size[-2]) * int(image_size[-1]) * 4
    return max(1, min(batch, (MICRO_BATCH_BYTES if budget is None else budget) // per_image))


def training_micro_batch(model: nn.Module, x: torch.Tensor, budget: int | None = None) -> int:
    """Micro-batch for one training step of ``model`` on ``x``: the whole batch unless splittable."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ArchSpec) or not splittable(spec):
        return len(x)
    return micro_batch_size(spec, x.shape, len(x), x.device, budget=budget)


def _piece_losses(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, micro_batch: int
) -> Iterator[torch.Tensor]:
    """The losses of ``x`` in micro-batches; they add up to the batch's mean cross-entropy.

    A whole batch gives the plain mean (the plain loop's numbers bit for bit); a piece gives its
    summed loss over the whole batch's size.
    """
    n = len(x)
    if micro_batch >= n:
        yield F.cross_entropy(forward(x).float(), y)
        return
    for start in range(0, n, micro_batch):
        part = slice(start, start + micro_batch)
        yield F.cross_entropy(forward(x[part]).float(), y[part], reduction="sum") / n


def cross_entropy_backward(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, micro_batch: int
) -> torch.Tensor:
    """Backpropagate the mean cross-entropy of ``forward(x)`` against ``y``, ``micro_batch`` images at a time.

    Gradients accumulate in the parameters' ``.grad`` as one ``loss.backward()`` would put them
    (clear them first). Returns the mean loss, detached.
    """
    total = torch.zeros((), device=x.device)
    for loss in _piece_losses(forward, x, y, micro_batch):
        loss.backward()  # type: ignore[no-untyped-call]
        total += loss.detach()
    return total


def cross_entropy_grad(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: Sequence[torch.Tensor],
    micro_batch: int,
    *,
    bf16: bool = False,
) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy of ``net(x)`` over ``params``, ``micro_batch`` images at a time.

    Unlike :func:`cross_entropy_backward` nothing is written to ``.grad``. ``bf16`` runs the
    forward under bfloat16 autocast (the loss in float32).
    """

    def forward(part: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out: torch.Tensor = net(part)
        return out

    total: list[torch.Tensor] | None = None
    for loss in _piece_losses(forward, x, y, micro_batch):
        grads = torch.autograd.grad(loss, params)
        total = list(grads) if total is None else [t.add_(g) for t, g in zip(total, grads, strict=True)]
    assert total is not None, "an empty batch has no gradient"
    return total
