"""DC, side by side: seconds per gradient-matching iteration, the project's DC vs the authors' loop.

For ipc 1 and 10 this script runs N iterations of dataset condensation (DC, Zhao et al. ICLR 2021)

- the reference: :func:`reference_dc` below, the authors' ``main.py`` loop written out as research
  code does it: per class the real gradient with ``torch.autograd.grad`` over *every* parameter,
  the synthetic gradient with ``create_graph=True``, the layer-wise distance in a Python loop over
  the parameters, ``loss.backward()``, an image SGD step, ``loss.item()`` every outer step; then the
  inner training of the net on the synthetic set with a plain loop; and
- ours: ``nas_proxy.proxies.matching.DC(...).build(train)``, the path ``nas-proxy build`` runs,

from the same state: the same seed gives both the same initial images, the same random nets and
the same real batches, because the reference draws every random choice from one seeded
``torch.Generator`` in the order the project does (the authors use the global RNG and a
shuffling DataLoader; their draws are replaced one for one, nothing else is changed). It checks
that the per-iteration losses agree (and the final images), and prints
``RESULT dc-ipc<k> ratio=<reference seconds / ours> equal=yes|no``. Records go to
``results/benchmarks/dc_step-<machine>[-quick].{md,json}``.

    python benchmarks/dc_step.py --quick        # a few minutes on a 2-core CPU
    python benchmarks/dc_step.py                # the paper's loops (outer/inner 1/1 and 10/50), 5 iterations:
                                                # about an hour on a 2-core CPU, seconds on a GPU
    python benchmarks/dc_step.py --smoke        # seconds: tiny synthetic data, record in /tmp

Timings on a shared machine move with its load: the load average is printed and recorded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas_proxy.cli import OneLineParser
from nas_proxy.data import Split, load_dataset, make_synthetic
from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError
from nas_proxy.models import build_model
from nas_proxy.proxies.matching import DC, default_loops
from nas_proxy.space import DEFAULT_ARCH, ArchSpec

from _common import Comparison, Timer, describe, machine, max_relative_diff, record_target, write_record


@dataclass(frozen=True)
class DCSettings:
    """One DC run: what both implementations are given (the DC builder's defaults otherwise)."""

    ipc: int
    iterations: int
    arch: str
    outer_loop: int
    inner_loop: int
    batch_real: int = 256
    batch_train: int = 256
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    momentum_net: float = 0.5
    bn_real_per_class: int = 16
    seed: int = 0


# ----------------------------------------------------------------------------- the reference loop


def distance_wb(gwr: torch.Tensor, gws: torch.Tensor) -> torch.Tensor:
    """The authors' per-layer distance: 1 - cosine per output unit, summed; 0 for 1-D tensors."""
    shape = gwr.shape
    if len(shape) == 4:  # conv, out x in*h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:  # layernorm, C x h*w
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:  # biases, norm affine vectors: not counted
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The authors' ``match_loss`` with ``dis_metric='ours'``: a Python loop over the parameters."""
    dis = torch.tensor(0.0, device=device)
    for ig in range(len(gw_real)):
        dis += distance_wb(gw_real[ig], gw_syn[ig])
    return dis


def reference_dc(train: Split, s: DCSettings) -> tuple[torch.Tensor, list[float]]:
    """The authors' DC loop; returns the final synthetic images and the loss of every iteration.

    Every random draw comes from one generator ``g`` seeded with ``s.seed``, in the project's
    order: initial noise images; per iteration the net's seed; per outer step the BatchNorm batch
    (BatchNorm nets only) and each class's real batch; per inner epoch the shuffle.
    """
    device = train.device
    g = torch.Generator().manual_seed(s.seed)
    num_classes, ipc = train.num_classes, s.ipc
    channel, im_size = train.in_channels, train.image_size
    indices_class = [train.indices_of_class(c) for c in range(num_classes)]

    def get_images(c: int, n: int) -> torch.Tensor:  # get random n images from class c
        idx_shuffle = torch.randperm(len(indices_class[c]), generator=g)[:n]
        return train.images[indices_class[c][idx_shuffle.to(device)]]

    image_syn = torch.randn((num_classes * ipc, channel, im_size, im_size), generator=g).to(device)
    image_syn.requires_grad_(True)
    label_syn = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=s.lr_img, momentum=s.momentum_img)
    optimizer_img.zero_grad()
    criterion = nn.CrossEntropyLoss().to(device)
    losses: list[float] = []
    for _it in range(s.iterations):
        net_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        net = build_model(s.arch, channel, im_size, num_classes, seed=net_seed).to(device)
        net.train()
        net_parameters = list(net.parameters())
        optimizer_net = torch.optim.SGD(net.parameters(), lr=s.lr_net, momentum=s.momentum_net)
        optimizer_net.zero_grad()
        loss_avg = 0.0
        for ol in range(s.outer_loop):
            # BatchNorm: statistics from real data of every class, then frozen for matching.
            bn_flag = any("BatchNorm" in type(module).__name__ for module in net.modules())
            if bn_flag:
                img_real = torch.cat([get_images(c, s.bn_real_per_class) for c in range(num_classes)], dim=0)
                net.train()
                net(img_real)
                for module in net.modules():
                    if "BatchNorm" in type(module).__name__:
                        module.eval()

            loss = torch.tensor(0.0, device=device)
            for c in range(num_classes):
                img_real = get_images(c, s.batch_real)
                lab_real = torch.ones((img_real.shape[0],), device=device, dtype=torch.long) * c
                img_syn = image_syn[c * ipc : (c + 1) * ipc].reshape((ipc, channel, im_size, im_size))
                lab_syn = torch.ones((ipc,), device=device, dtype=torch.long) * c

                output_real = net(img_real)
                loss_real = criterion(output_real, lab_real)
                gw_real = torch.autograd.grad(loss_real, net_parameters)
                gw_real = tuple(_.detach().clone() for _ in gw_real)

                output_syn = net(img_syn)
                loss_syn = criterion(output_syn, lab_syn)
                gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)

                loss += match_loss(gw_syn, gw_real, device)

            optimizer_img.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer_img.step()
            loss_avg += loss.item()

            if ol == s.outer_loop - 1:
                break

            # Inner loop: train the net on the synthetic set (the authors' DataLoader + epoch()).
            image_syn_train, label_syn_train = copy.deepcopy(image_syn.detach()), copy.deepcopy(label_syn.detach())
            n = len(label_syn_train)
            for _il in range(s.inner_loop):
                net.train()
                order = torch.randperm(n, generator=g).to(device)
                for i in range(0, n, s.batch_train):
                    idx = order[i : i + s.batch_train]
                    output = net(image_syn_train[idx])
                    loss_train = criterion(output, label_syn_train[idx])
                    optimizer_net.zero_grad()
                    loss_train.backward()
                    optimizer_net.step()
        loss_avg /= num_classes * s.outer_loop
        losses.append(loss_avg)
    return image_syn.detach(), losses


# ----------------------------------------------------------------------------- ours


def project_dc(
    train: Split, s: DCSettings, real_dtype: str = "float32"
) -> tuple[torch.Tensor, list[tuple[int, float]], int]:
    """``nas_proxy``'s DC build: its images, loss history ``[(iteration, mean loss)]`` and real chunk."""
    builder = DC(
        real_dtype=real_dtype,  # type: ignore[arg-type]
        ipc=s.ipc,
        seed=s.seed,
        iterations=s.iterations,
        batch_real=s.batch_real,
        outer_loop=s.outer_loop,
        inner_loop=s.inner_loop,
        lr_img=s.lr_img,
        momentum_img=s.momentum_img,
        lr_net=s.lr_net,
        momentum_net=s.momentum_net,
        batch_train=s.batch_train,
        init="noise",
        distance="ours",
        arch=s.arch,
        bn_real_per_class=s.bn_real_per_class,
    )
    proxy = builder.build(train, progress=False)
    history = [(int(p[0]), float(p[1])) for p in proxy.manifest.extra["loss_history"]]
    return proxy.images, history, int(proxy.manifest.extra["micro_batch"])


def windows(losses: list[float], history: list[tuple[int, float]]) -> list[float]:
    """The reference's per-iteration losses averaged over the project's history windows."""
    out, start = [], 0
    for done, _ in history:
        part = losses[start:done]
        out.append(sum(part) / len(part))
        start = done
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- data and settings


def dc_data(args: argparse.Namespace, device: torch.device) -> tuple[Split, str]:
    """The training set DC samples real batches from: Fashion-MNIST's 60k, or synthetic images."""
    if args.smoke:
        train, _ = make_synthetic(num_classes=10, train_per_class=12, test_per_class=1, size=16)
        return train.to(device), "synthetic (10 classes, 12 per class, 1x16x16)"
    if args.synthetic:
        train, _ = make_synthetic(num_classes=10, train_per_class=300, test_per_class=1)
        return train.to(device), "synthetic (10 classes, 300 per class, 1x28x28)"
    train, _ = load_dataset("fashionmnist", device=device)
    return train, f"Fashion-MNIST training set ({len(train)} images)"


def settings_for(args: argparse.Namespace, ipc: int) -> DCSettings:
    outer, inner = default_loops(ipc)
    if args.quick:  # ipc 10: 2 outer steps and 10 inner epochs instead of 10 and 50
        outer, inner = min(outer, 2), min(inner, 10)
    if args.smoke:
        outer, inner = min(outer, 2), min(inner, 2)
    return DCSettings(
        ipc=ipc,
        iterations=args.iterations,
        arch=args.arch,
        outer_loop=args.outer_loop or outer,
        inner_loop=args.inner_loop or inner,
        batch_real=args.batch_real,
        seed=args.seed,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=(__doc__ or "").split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 iterations, ipc 10 with 2 outer / 10 inner loops")
    mode.add_argument("--smoke", action="store_true", help="seconds: tiny synthetic data and net, record in /tmp")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of Fashion-MNIST")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class (default 1 10)")
    p.add_argument("--iterations", type=int, default=None, help="DC iterations per run (default 5; quick 2)")
    p.add_argument("--arch", default=None, help=f"matching network (default {DEFAULT_ARCH.id})")
    p.add_argument("--outer-loop", type=int, default=None, help="override the reference table's outer loop")
    p.add_argument("--inner-loop", type=int, default=None, help="override the reference table's inner loop")
    p.add_argument("--batch-real", type=int, default=None, help="real images per class and step (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--real-dtype",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="our real-gradient dtypes to time against the one float32 reference (default both)",
    )
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the loss and image checks")
    p.add_argument(
        "--count-flops",
        action="store_true",
        help="also count one iteration's convolution and matmul FLOPs (one more untimed iteration of ours) "
        "and this device's float32 GEMM peak: how close each side runs to the hardware",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=None, help="record folder (default results/benchmarks; smoke: /tmp)")
    args = p.parse_args(argv)
    if args.iterations is None:
        args.iterations = 2 if args.smoke or args.quick else 5
    if args.arch is None:
        args.arch = "ConvNet-D2-W8-AR-IN-AP" if args.smoke else DEFAULT_ARCH.id
    if args.batch_real is None:
        args.batch_real = 8 if args.smoke else 256
    for name in ("iterations", "batch_real", "outer_loop", "inner_loop"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if any(k < 1 for k in args.ipc):
        p.error(f"--ipc values must be positive integers, got {args.ipc}")
    return args


# ----------------------------------------------------------------------------- main


def _max_rel_loss(ours: Sequence[float], ref: Sequence[float]) -> float:
    """The largest relative difference of two loss curves, point by point."""
    return max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, ref, strict=True))


def gflop_per_iteration(train: Split, s: DCSettings) -> float:
    """Convolution and matmul GFLOP of one DC iteration (ours, float32; the reference does the same
    arithmetic: it also asks for the 1-D parameters' gradients, which are sums, not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        project_dc(train, dataclasses.replace(s, iterations=1))
    return float(counter.get_total_flops()) / 1e9


def gemm_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Float32 GFLOP/s of an n x n matmul on ``device`` at the current thread count: the hardware's ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    with Timer() as t:
        for _ in range(repeats):
            a @ b
        _sync(device)
    return 2 * n**3 * repeats / t.seconds / 1e9


def compare(train: Split, s: DCSettings, rtol: float, dtypes: Sequence[str]) -> list[Comparison]:
    """Run the reference once, then ours for each real-gradient dtype, from the same seed; compare."""
    device = train.device
    _sync(device)
    with Timer() as ref_t:
        ref_images, ref_losses = reference_dc(train, s)
        _sync(device)
    # The float floor: the reference again with another thread count (on a CPU only the summation
    # order of some kernels changes): how far float32 moves the result by itself.
    floor = "n/a"
    # Tolerances: rtol, or twice the reference's own float noise where that is larger (a run of a
    # few chaotic DC iterations at ipc 10 moves by ~1e-3 from the summation order alone).
    loss_tol, image_tol = rtol, rtol
    if device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            alt_images, alt_losses = reference_dc(train, s)
        finally:
            torch.set_num_threads(threads)
        alt_loss = _max_rel_loss(alt_losses, ref_losses)
        alt_image = max_relative_diff(alt_images, ref_images)
        floor = f"loss {alt_loss:.1e} / images {alt_image:.1e}"
        loss_tol, image_tol = max(rtol, 2 * alt_loss), max(rtol, 2 * alt_image)
    out = []
    for dtype in dtypes:
        with Timer() as ours_t:
            our_images, history, chunk = project_dc(train, s, dtype)
            _sync(device)
        ref_curve = windows(ref_losses, history)
        our_curve = [v for _, v in history]
        loss_diff = _max_rel_loss(our_curve, ref_curve)
        image_diff = max_relative_diff(our_images, ref_images)
        # History values are rounded to 6 decimals; tiny absolute differences are that rounding.
        losses_equal = all(
            math.isclose(a, b, rel_tol=loss_tol, abs_tol=2e-6) for a, b in zip(our_curve, ref_curve, strict=True)
        )
        equal = losses_equal and image_diff <= image_tol
        details = {
            "iterations": s.iterations,
            "outer_loop": s.outer_loop,
            "inner_loop": s.inner_loop,
            "batch_real": s.batch_real,
            "arch": s.arch,
            "real_dtype": dtype,
            "micro_batch": chunk,
            "ref_s_per_it": round(ref_t.seconds / s.iterations, 4),
            "ours_s_per_it": round(ours_t.seconds / s.iterations, 4),
            "loss_first": round(ref_losses[0], 5),
            "loss_last": round(ref_losses[-1], 5),
            "max_rel_loss_diff": f"{loss_diff:.1e}",
            "max_rel_image_diff": f"{image_diff:.1e}",
            "ref_threads_floor": floor,
            "tolerance": f"loss {loss_tol:.1e} / images {image_tol:.1e}",
        }
        name = f"dc-ipc{s.ipc}" + ("" if dtype == "float32" else f"-{dtype}")
        # Seconds per iteration on both sides: the ratio is the same as of the totals.
        out.append(Comparison(name, ref_t.seconds / s.iterations, ours_t.seconds / s.iterations, equal, details))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except NasProxyError as exc:  # a bad --arch, --device, ...: one line, exit 2, as the CLI
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    ArchSpec.from_id(args.arch)  # a bad id fails before any data is loaded
    device = resolve_device(args.device)
    train, data_text = dc_data(args, device)
    info = machine(device)
    print(describe(info), flush=True)
    print(f"data: {data_text}; matching net {args.arch}", flush=True)
    for k in args.ipc:
        short = int(torch.bincount(train.labels.cpu(), minlength=train.num_classes).min())
        if short < k:
            print(f"error: ipc {k} needs {k} images per class; the data has {short}", file=sys.stderr)
            return 2
    # Warm-up, not timed: first calls pay for lazy initialisation (kernels, allocator, CUDA context).
    warm = DCSettings(ipc=1, iterations=1, arch=args.arch, outer_loop=1, inner_loop=1, batch_real=8, seed=args.seed)
    reference_dc(train, warm)
    project_dc(train, warm)

    comparisons: list[Comparison] = []
    for k in args.ipc:
        s = settings_for(args, k)
        print(f"ipc {k}: {s.iterations} iterations, outer {s.outer_loop}, inner {s.inner_loop} ...", flush=True)
        found = compare(train, s, args.rtol, args.real_dtype)
        if args.count_flops:
            gflop, peak = gflop_per_iteration(train, s), gemm_peak_gflops(device)
            for c in found:
                c.details["gflop_per_it"] = round(gflop, 1)
                c.details["gemm_peak_gflops"] = round(peak, 1)
                c.details["ref_gflops"] = round(gflop / c.details["ref_s_per_it"], 1)
                c.details["ours_gflops"] = round(gflop / c.details["ours_s_per_it"], 1)
        for c in found:
            comparisons.append(c)
            print(c.result_line(), c.details, flush=True)

    info_after = machine(device)
    notes = [
        f"data: {data_text}; matching net {args.arch}; noise init, the DC builder's defaults otherwise",
        "reference: the authors' DC loop written out in this file (real gradient over every parameter, "
        "per-parameter distance loop, loss.backward(), loss.item() per outer step, plain inner loop); "
        "ours: nas_proxy.proxies.matching.DC(...).build(train); same seed, same generator draws; "
        "ours runs each class's real gradient in pieces of micro_batch images (a few MiB of activations on a CPU, "
        "matching.micro_batch_size; their gradients summed) where the reference runs the batch at once; "
        "dc-ipcK-bfloat16 is ours with real_dtype=bfloat16 (the real-gradient pass under bfloat16 autocast) "
        "against the same float32 reference",
        "seconds are per DC iteration (total / iterations); one untimed warm-up iteration of each first",
        "equal: every logged loss within the loss tolerance (relative) and the final images within the image "
        "tolerance (of max |x|)",
        "ref_threads_floor: the reference against itself run with the other thread count (1 vs 2): the float32 "
        "noise of the reference alone, loss (relative) / images (of max |x|); tolerance: "
        f"{args.rtol} or twice that floor, whichever is larger",
        f"torch threads: {torch.get_num_threads()}; load average after the run: {info_after['load_average']}",
    ]
    if args.count_flops:
        notes.append(
            "--count-flops: gflop_per_it counts the convolutions and matmuls of one iteration of ours "
            "(torch.utils.flop_counter, float32); ref_gflops / ours_gflops: that over each side's seconds per "
            "iteration; gemm_peak_gflops: a float32 2048x2048 matmul on this device, the hardware's ceiling "
            "(a bfloat16 run does the same FLOPs, partly at bfloat16's higher peak)"
        )
    if args.quick:
        notes.append("--quick: 2 iterations; ipc 10 with outer 2 / inner 10 (the paper: 10 / 50)")
    if args.smoke:
        notes.append("--smoke: a wiring check on tiny data; its seconds mean nothing")
    settings = {
        "ipc": args.ipc,
        "iterations": args.iterations,
        "arch": args.arch,
        "batch_real": args.batch_real,
        "quick": args.quick,
        "smoke": args.smoke,
        "synthetic": args.synthetic,
        "seed": args.seed,
        "real_dtype": args.real_dtype,
        "count_flops": args.count_flops,
    }
    out_dir, suffix = record_target(args.out, smoke=args.smoke, quick=args.quick, synthetic=args.synthetic)
    path = write_record("dc_step", info, comparisons, settings, notes, out_dir=out_dir, suffix=suffix)
    print(f"wrote {path}")
    for c in comparisons:
        print(c.result_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
