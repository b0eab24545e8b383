"""Micro-batches: the same gradient as one batch, up to float rounding; whole batches where needed."""

from __future__ import annotations

import ctypes

import pytest
import torch
from torch import nn

from nas_proxy.data import make_synthetic
from nas_proxy.microbatch import (
    KEPT_MEMORY_MICRO_BATCH_BYTES,
    MICRO_BATCH_BYTES,
    cross_entropy_backward,
    cross_entropy_grad,
    keep_freed_memory,
    micro_batch_size,
    splittable,
    training_micro_batch,
)
from nas_proxy.models import build_model
from nas_proxy.space import ArchSpec

NORMS = ["IN", "GN", "LN", "NN", "BN"]


def _assert_all_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Equal up to float32 rounding of sums in another order, relative to the gradient's scale.

    (A conv bias before a per-image norm has a gradient of zero plus rounding: it needs the scale.)
    """
    scale = max(float(t.abs().max()) for t in want)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


def _net_and_batch(norm: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    train, _ = make_synthetic(num_classes=3, train_per_class=7, test_per_class=1, size=16, noise=0.5, seed=1)
    net = build_model(f"ConvNet-D2-W8-AR-{norm}-AP", 1, 16, 3, seed=0)
    if norm == "BN":
        net(train.images)  # running statistics, then frozen: per image again, as DC uses it
        net.eval()
    return net, train.images, train.labels


@pytest.mark.parametrize("norm", NORMS)
def test_gradient_in_micro_batches_equals_the_whole_batch_gradient(norm: str) -> None:
    net, x, y = _net_and_batch(norm)
    params = [p for p in net.parameters() if p.ndim > 1]
    whole = cross_entropy_grad(net, x, y, params, len(x))
    assert any(float(t.abs().max()) > 0 for t in whole)
    for micro in (5, 1, 100):
        _assert_all_close(cross_entropy_grad(net, x, y, params, micro), whole)
    assert all(p.grad is None for p in net.parameters())  # grad() leaves .grad alone


@pytest.mark.parametrize("norm", NORMS)
def test_backward_in_micro_batches_fills_grad_as_one_backward(norm: str) -> None:
    net, x, y = _net_and_batch(norm)
    whole_loss = cross_entropy_backward(net, x, y, len(x))
    whole = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    net.zero_grad(set_to_none=True)
    loss = cross_entropy_backward(net, x, y, 4)
    pieces = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(pieces) == len(whole) == len(list(net.parameters()))
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-7)
    _assert_all_close(pieces, whole)


def test_micro_batch_size_keeps_the_widest_activation_cache_sized_on_a_cpu_only() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    default = ArchSpec.from_id("ConvNet-D3-W128-AR-IN-AP")
    # W128 on 28x28: 401,408 bytes an image at the first block, 10 images in 4 MiB.
    assert micro_batch_size(default, (28, 28), 256, cpu) == MICRO_BATCH_BYTES // (128 * 28 * 28 * 4) == 10
    assert micro_batch_size(default, (1, 28, 28), 256, gpu) == 256
    assert micro_batch_size(default, (28, 28), 256, cpu, models=2) == 5
    assert micro_batch_size(ArchSpec(width=8), (16, 16), 12, cpu) == 12  # a small batch stays whole
    assert micro_batch_size(ArchSpec(width=4096), (64, 64), 256, cpu) == 1


def test_a_plan_for_worker_processes_takes_larger_pieces_and_process_history_changes_nothing() -> None:
    """The budget is an argument (a plan's workers keep their freed memory and get the larger one);
    keeping freed memory in this process changes no piece size, so no float rounding."""
    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("glibc only")
    default = ArchSpec.from_id("ConvNet-D3-W128-AR-IN-AP")
    cpu = torch.device("cpu")
    assert micro_batch_size(default, (28, 28), 256, cpu) == 10
    keep_freed_memory()
    assert micro_batch_size(default, (28, 28), 256, cpu) == 10  # this process's history: no effect
    kept = KEPT_MEMORY_MICRO_BATCH_BYTES
    assert micro_batch_size(default, (28, 28), 256, cpu, budget=kept) == kept // (128 * 28 * 28 * 4) == 41
    assert micro_batch_size(default, (28, 28), 256, torch.device("cuda"), budget=kept) == 256


def test_batch_statistics_keep_a_training_batch_whole() -> None:
    x = torch.zeros(256, 1, 28, 28)
    assert not splittable(ArchSpec(norm="batchnorm")) and not splittable(None)
    assert training_micro_batch(build_model("ConvNet-D3-W128-AR-BN-AP"), x) == 256
    assert training_micro_batch(build_model("ConvNet-D3-W128-AR-IN-AP"), x) == 10
    assert training_micro_batch(nn.Linear(4, 2), x) == 256  # not a ConvNet: nothing known, whole
