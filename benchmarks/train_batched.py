"""Proxy training, side by side: R seeds of one candidate, the plain loop vs ``nas_proxy.plan.train_many``.

The NAS protocol trains every candidate 100 epochs on a 100-image proxy (10 per class, batch 256:
one SGD step an epoch). For a narrow, the default and a wide candidate this script times

- the reference: the plain one-by-one loop written out below (per model, per step, a standard
  ``nn.Module`` and ``torch.optim.SGD``, the process's default torch threads), as research code
  does it; and
- ours: ``train_many(spec, proxy, test, config, seeds, strategy="auto", n_jobs=<cores>)``,

checks that both give the same test accuracies (and, for seed 0, the same final parameters), and
prints ``RESULT <name> ratio=<reference seconds / ours> equal=yes|no``. Records go to
``results/benchmarks/train_batched-<machine>[-quick].{md,json}``.

    python benchmarks/train_batched.py --quick            # a few minutes on a 2-core CPU
    python benchmarks/train_batched.py                    # the full protocol (long on a CPU)
    python benchmarks/train_batched.py --synthetic --quick --explore

Timings on a shared machine move with its load: the load average is printed and recorded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas_proxy import kernels
from nas_proxy.cli import OneLineParser
from nas_proxy.data import Split, load_dataset, make_synthetic
from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError
from nas_proxy.microbatch import keep_freed_memory
from nas_proxy.models import build_model, count_flops
from nas_proxy.plan import Plan, choose_plan, micro_batch_budget, train_many
from nas_proxy.space import ArchSpec
from nas_proxy.stacked import train_stacked
from nas_proxy.train import TrainConfig, train_model

from _common import Comparison, Timer, describe, machine, max_relative_diff, record_target, write_record


@dataclass(frozen=True)
class Case:
    label: str
    arch: str
    seeds: int
    epochs: int
    train_images: int | None = None  # None: the 100-image proxy; else that many whole-data images


# ----------------------------------------------------------------------------- the reference loop


def plain_loop(
    arch: str,
    train: Split,
    test: Split,
    cfg: TrainConfig,
    seeds: list[int],
    dtype: torch.dtype = torch.float32,
    perturb: int | None = None,
) -> tuple[list[float], nn.Module]:
    """One model after another, one step after another: what research code does.

    The protocol of ``nas_proxy.train``: SGD with momentum and weight decay, each seed's own
    shuffled order, lr x0.1 at half the steps, then test accuracy in eval mode.
    Returns the accuracies and the first model (for the parameter check). ``dtype=torch.float64``
    gives the float floor: how far float32 rounding alone takes the loop from exact arithmetic.
    ``perturb=k`` multiplies every initial weight by ``1 + 1e-7 * noise`` (noise seeded by k), a
    rounding error's size: how far such a difference alone grows over the run.
    """
    accuracies: list[float] = []
    first: nn.Module | None = None
    for seed in seeds:
        model = build_model(arch, train.in_channels, train.image_size, train.num_classes, seed=seed)
        model = model.to(train.device, dtype)
        if perturb is not None:
            noise = torch.Generator().manual_seed(perturb)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=noise).to(p))
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        n = len(train)
        total = cfg.epochs * math.ceil(n / cfg.batch_size)
        step = 0
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen).to(train.device)
            for i in range(0, n, cfg.batch_size):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (0.1 if step >= int(total * cfg.decay_at) else 1.0)
                idx = order[i : i + cfg.batch_size]
                loss = loss_fn(model(train.images[idx].to(dtype)), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test), 256):  # the authors' test loader: batches of 256
                logits = model(test.images[i : i + 256].to(dtype))
                correct += int((logits.argmax(1) == test.labels[i : i + 256]).sum())
        accuracies.append(correct / len(test))
        if first is None:
            first = model
    assert first is not None
    return accuracies, first


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    """The largest difference of any floating tensor of ``a`` and ``b``, relative to that tensor's max |b|."""
    return max(
        max_relative_diff(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        if y.is_floating_point()
    )


def _train_seed0(
    spec: ArchSpec, train: Split, cfg: TrainConfig, stack: list[int], inner: str, worker: bool
) -> nn.Module:
    budget = micro_batch_budget(in_workers=worker)  # the plan's budget for a worker, or for this process
    if worker:  # what nas_proxy.plan's workers set up before training
        torch.set_num_threads(1)
        keep_freed_memory()
    models = [
        build_model(spec, train.in_channels, train.image_size, train.num_classes, seed=s).to(train.device)
        for s in stack
    ]
    if inner == "stacked":
        train_stacked(models, train, cfg, stack, micro_batch_bytes=budget)
    else:
        train_model(models[0], train, cfg, stack[0], micro_batch_bytes=budget)
    return models[0].cpu()


def seed0_as_ours(
    spec: ArchSpec, train: Split, cfg: TrainConfig, seeds: list[int], plan: Plan, threads: int
) -> nn.Module:
    """Seed 0's model as ``train_many`` trains it under ``plan``: in the same stack of seeds, with the
    same thread count and allocator settings (a loky worker for ``parallel``)."""
    inner = plan.inner if plan.strategy == "parallel" else plan.strategy
    share = seeds[:: plan.n_jobs] if plan.strategy == "parallel" else seeds
    stack = share[: plan.stack_size] if inner == "stacked" else share[:1]
    if plan.strategy != "parallel":
        torch.set_num_threads(threads)
        return _train_seed0(spec, train, cfg, stack, inner, worker=False)
    from joblib import Parallel, delayed

    # joblib's pool, as ours (with n_jobs=1 joblib would run the task here instead of in a worker).
    task = delayed(_train_seed0)(spec, train.to("cpu"), cfg, stack, inner, True)
    (model,) = Parallel(n_jobs=plan.n_jobs, backend="loky")([task])
    return model  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- data and cases


def proxy_data(synthetic: bool, test_images: int, device: torch.device, seed: int = 0) -> tuple[Split, Split, str]:
    """A 100-image proxy (10 random images per class) and a test subset."""
    if synthetic:
        train, test = make_synthetic(num_classes=10, train_per_class=10, test_per_class=max(1, test_images // 10))
        return train.to(device), test.to(device), "synthetic (10 classes, 1x28x28)"
    full_train, full_test = load_dataset("fashionmnist")
    g = torch.Generator().manual_seed(seed)
    picks = [
        full_train.indices_of_class(c)[torch.randperm(len(full_train.indices_of_class(c)), generator=g)[:10]]
        for c in range(full_train.num_classes)
    ]
    proxy = full_train.subset(torch.cat(picks))
    test = full_test.random_subset(min(test_images, len(full_test)), seed=seed)
    return proxy.to(device), test.to(device), "Fashion-MNIST, 10 random train images per class"


def whole_data(synthetic: bool, n: int, device: torch.device, seed: int = 0) -> Split:
    """``n`` random training images: the ground-truth side of the evaluator (one seed, batch 256)."""
    if synthetic:
        train, _ = make_synthetic(num_classes=10, train_per_class=max(1, n // 10), test_per_class=1)
        return train.to(device)
    full_train, _ = load_dataset("fashionmnist")
    return full_train.random_subset(min(n, len(full_train)), seed=seed).to(device)


def _candidates(args: argparse.Namespace) -> list[str]:
    return [a for a in (args.candidates or "").split(",") if a]


def cases(args: argparse.Namespace) -> list[Case]:
    # --candidates: more architectures, each trained as the narrow case is ("never slower for any candidate")
    if args.quick:
        return [
            Case("narrow", args.narrow, 10, 20),
            Case("default", args.default, 4, 3),
            Case("wide", args.wide, 2, 2),
            Case("whole", args.default, 1, 1, min(args.whole_images, 10_000)),
            *(Case("candidate", a, 10, 20) for a in _candidates(args)),
        ]
    return [
        Case("narrow", args.narrow, args.seeds, args.epochs),
        Case("default", args.default, args.seeds, args.epochs),
        Case("wide", args.wide, args.wide_seeds, args.wide_epochs),
        Case("whole", args.default, 1, args.whole_epochs, args.whole_images),
        *(Case("candidate", a, args.seeds, args.epochs) for a in _candidates(args)),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds and epochs: a few minutes on a 2-core CPU")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of Fashion-MNIST")
    p.add_argument("--narrow", default="ConvNet-D3-W8-AR-IN-AP")
    p.add_argument("--default", default="ConvNet-D3-W128-AR-IN-AP")
    p.add_argument("--wide", default="ConvNet-D3-W256-AR-IN-AP")
    p.add_argument("--seeds", type=int, default=10, help="seeds of the narrow and default candidates (R)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--wide-seeds", type=int, default=2, help="the wide candidate is slow on a CPU")
    p.add_argument("--wide-epochs", type=int, default=20)
    p.add_argument("--whole-images", type=int, default=60_000, help="training images of the whole-data case")
    p.add_argument("--whole-epochs", type=int, default=1, help="epochs of the whole-data case (the protocol: 300)")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--n-jobs", type=int, default=-1, help="worker processes for ours (-1: one per core)")
    p.add_argument("--device", default="auto")
    p.add_argument("--reference-threads", type=int, default=None, help="torch threads of the reference loop")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating; best of them counts")
    p.add_argument("--explore", action="store_true", help="also time each strategy on its own")
    p.add_argument(
        "--float64-floor",
        action="store_true",
        help="also train seed 0 by the reference in float64: how far float32 rounding alone moves its weights",
    )
    p.add_argument(
        "--perturbations",
        type=int,
        default=3,
        help="reference runs of seed 0 from initial weights moved by 1e-7 relative (the float floor of a chaotic run)",
    )
    p.add_argument(
        "--candidates",
        default=None,
        metavar="ID,...",
        help="more architectures, each trained as the narrow case (label 'candidate'; e.g. --only candidate)",
    )
    p.add_argument("--only", default=None, help="comma-separated labels to run (narrow,default,wide,whole,candidate)")
    args = p.parse_args(argv)
    counts = ("seeds", "epochs", "wide_seeds", "wide_epochs", "whole_images", "whole_epochs", "test_images", "repeats")
    for name in counts:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.perturbations < 0:
        p.error(f"--perturbations must be 0 or more, got {args.perturbations}")
    if args.reference_threads is not None and args.reference_threads < 1:
        p.error(f"--reference-threads must be a positive integer, got {args.reference_threads}")
    labels = ("narrow", "default", "wide", "whole", "candidate")
    unknown = sorted(set(args.only.split(",")) - set(labels)) if args.only else []
    if unknown:
        p.error(f"--only: unknown case {', '.join(unknown)}; valid: {', '.join(labels)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except NasProxyError as exc:  # a bad architecture id or device: one line, exit 2, as the CLI
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    for arch in (args.narrow, args.default, args.wide, *_candidates(args)):
        ArchSpec.from_id(arch)  # a bad id fails before any data is loaded
    device = resolve_device(args.device)
    proxy, test, data_text = proxy_data(args.synthetic, args.test_images, device)
    info = machine(device)
    print(describe(info), flush=True)
    comparisons: list[Comparison] = []
    wanted = set(args.only.split(",")) if args.only else None
    for case in cases(args):
        if wanted is not None and case.label not in wanted:
            continue
        train = proxy if case.train_images is None else whole_data(args.synthetic, case.train_images, device)
        cfg = TrainConfig(epochs=case.epochs, batch_size=256)
        seeds = list(range(case.seeds))
        spec = ArchSpec.from_id(case.arch)
        n_jobs = len(os.sched_getaffinity(0)) if args.n_jobs == -1 else args.n_jobs
        plan = choose_plan(spec, train, cfg, len(seeds), n_jobs)
        train_many("ConvNet-D1-W4-AR-NN-NP", train, test, cfg, [0, 1], n_jobs=n_jobs)  # start workers: not timed
        threads = torch.get_num_threads()
        torch.set_num_threads(args.reference_threads or threads)
        # Untimed warm-up of this architecture on both sides: the first run in a process pays for
        # allocator growth and kernel selection (a cold reference measured up to 1.4x slower).
        warm = TrainConfig(epochs=1, batch_size=256)
        plain_loop(case.arch, train, test, warm, [0])
        torch.set_num_threads(threads)
        train_many(spec, train, test, warm, seeds[: max(1, n_jobs)], strategy="auto", n_jobs=n_jobs)
        # The two sides alternate, best of --repeats each (as timeit): a shared host's slow spells
        # then hit both sides alike instead of deciding the ratio.
        ref_times, ours_times = [], []
        for _ in range(args.repeats):
            torch.set_num_threads(args.reference_threads or threads)
            with Timer() as ref_t:
                ref_acc, ref_model = plain_loop(case.arch, train, test, cfg, seeds)
            torch.set_num_threads(threads)
            with Timer() as ours_t:
                ours = train_many(spec, train, test, cfg, seeds, strategy="auto", n_jobs=n_jobs)
            ref_times.append(ref_t.seconds)
            ours_times.append(ours_t.seconds)
        ours_acc = [o.accuracy for o in ours]
        # Seed 0's final parameters as ours trains them (train_many returns accuracies, not models):
        # the plan's inner code on seed 0's stack, in a worker like ours' where ours uses workers.
        check = seed0_as_ours(spec, train, cfg, seeds, plan, threads)
        worker_threads = 1 if plan.strategy == "parallel" else threads
        # The float floor: the reference itself, seed 0, with the other thread count (only the
        # summation order of some kernels changes). Differences of ours below it are float noise.
        other = 1 if (args.reference_threads or threads) > 1 else 2
        torch.set_num_threads(other)
        _, ref_other = plain_loop(case.arch, train, test, cfg, [0])
        torch.set_num_threads(threads)
        param_diff = relative_difference(check, ref_model)
        floor = relative_difference(ref_other, ref_model)
        # The run is chaotic: a rounding-sized difference grows by orders of magnitude over 100
        # epochs, by how much depends on where it lands (one thread against two is one sample). So
        # also: the reference from initial weights moved by 1e-7 relative, a few times.
        perturbed = [
            relative_difference(plain_loop(case.arch, train, test, cfg, [0], perturb=k)[1], ref_model)
            for k in range(args.perturbations)
        ]
        acc_diff = max(abs(a - b) for a, b in zip(ref_acc, ours_acc, strict=True))
        # Float tolerance of a long chaotic run: 1e-3, or twice what the reference's own float noise
        # reaches (kernels summing in another order, rounding-sized changes of its start) where
        # that is larger (wide nets, long runs).
        param_tol = max(1e-3, 2 * floor, *(2 * d for d in perturbed))
        equal = all(o.status == "ok" for o in ours) and acc_diff <= 0.005 and param_diff <= param_tol
        name = f"{case.label}-{spec.id}-R{case.seeds}-E{case.epochs}"
        details = {
            "plan": f"{plan.strategy}(stack={plan.stack_size},jobs={plan.n_jobs},inner={plan.inner})",
            "flops": count_flops(spec),
            "mean_acc_ref": round(sum(ref_acc) / len(ref_acc), 4),
            "mean_acc_ours": round(sum(ours_acc) / len(ours_acc), 4),
            "max_acc_diff": round(acc_diff, 4),
            "max_rel_param_diff": f"{param_diff:.1e}",
            "seed0_threads": worker_threads,
            "ref_threads_floor": f"{floor:.1e}",
            "ref_perturbed_floor": "/".join(f"{d:.1e}" for d in perturbed) or "-",
            "param_tol": f"{param_tol:.1e}",
        }
        if args.float64_floor:  # float32's own error: the reference against itself in float64
            _, ref64 = plain_loop(case.arch, train, test, cfg, [0], dtype=torch.float64)
            details["float64_floor"] = f"{relative_difference(ref_model, ref64.float()):.1e}"
        if case.train_images is not None:
            details["train_images"] = len(train)
        details["runs_ref_s"] = "/".join(f"{t:.2f}" for t in ref_times)
        details["runs_ours_s"] = "/".join(f"{t:.2f}" for t in ours_times)
        comparisons.append(Comparison(name, min(ref_times), min(ours_times), equal, details))
        print(comparisons[-1].result_line(), details, flush=True)
        if args.explore:
            for label, kw in (
                ("stacked-all", {"strategy": "stacked"}),
                ("stacked-1", {"strategy": "stacked", "stack_size": 1}),
                ("parallel-1", {"strategy": "parallel", "n_jobs": n_jobs, "stack_size": 1}),
            ):
                with Timer() as t:
                    out = train_many(spec, train, test, cfg, seeds, **kw)  # type: ignore[arg-type]
                diff = max(abs(a - o.accuracy) for a, o in zip(ref_acc, out, strict=True))
                comparisons.append(
                    Comparison(f"{name}/{label}", min(ref_times), t.seconds, diff <= 0.005, {"max_acc_diff": diff})
                )
                print(comparisons[-1].result_line(), flush=True)
    info_after = machine(device)
    notes = [
        f"data: {data_text}; test accuracy on {len(test)} test images",
        "reference: the plain loop in this file with the process's default torch threads; ours: "
        "train_many(strategy='auto', n_jobs=cores), worker start-up (once per session) not timed; the reference "
        "tests in batches of 256 (the authors' test loader), ours in cache-sized ones (train.eval_batch_size)",
        f"seconds: best of {args.repeats} runs of each side, the sides alternating "
        "(every run in runs_ref_s / runs_ours_s)",
        "equal: every seed's accuracy within 0.5 points and seed 0's final tensors within param_tol relative "
        "(seed 0 retrained by ours' code in its stack of seeds, in a worker like ours' where ours uses workers); "
        "ref_threads_floor: the reference "
        "against itself at the other thread count, the float noise of the reference alone; "
        "ref_perturbed_floor: the reference against itself started from initial weights moved by 1e-7 "
        "relative (--perturbations runs): the run is chaotic, so a rounding-sized difference alone grows this far; "
        "param_tol: 1e-3 or twice the largest floor, whichever is larger; float64_floor (with --float64-floor): "
        "the reference's seed 0 in float32 against the same loop in float64, the error of float32 arithmetic itself",
        "ours on a CPU fuses each group norm -> ReLU -> average pooling block of a stacked network into one kernel "
        f"(nas_proxy.kernels; available here: {'yes' if kernels.available() else 'no'}): the same arithmetic, summed "
        "in another order",
        "ours on a CPU runs a batch of a net without BatchNorm in micro-batches of a few MiB (nas_proxy.microbatch: "
        "the same gradient up to float rounding), the reference in one piece",
        "whole: the ground-truth side, one seed of the default candidate on that many training images "
        "(train_images) for the given epochs, batch 256",
        f"load average after the run: {info_after['load_average']}",
    ]
    if args.quick:
        notes.append("--quick: narrow 10 seeds x 20 epochs, default 4 x 3, wide 2 x 2 (the protocol: 100 epochs)")
    settings = {
        "reference_threads": args.reference_threads or torch.get_num_threads(),
        "repeats": args.repeats,
        "quick": args.quick,
        "synthetic": args.synthetic,
        "n_jobs": args.n_jobs,
        "test_images": len(test),
    }
    out_dir, suffix = record_target(None, smoke=False, quick=args.quick, synthetic=args.synthetic)
    suffix += f"-ref{args.reference_threads}t" if args.reference_threads else ""
    suffix += f"-{'-'.join(sorted(wanted))}" if wanted else ""
    path = write_record("train_batched", info, comparisons, settings, notes, out_dir=out_dir, suffix=suffix)
    print(f"wrote {path}")
    for c in comparisons:
        print(c.result_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
