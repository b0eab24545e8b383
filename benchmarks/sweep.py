"""Whole sweep, side by side: candidates per minute of the evaluator on a proxy, and peak memory.

Over a stratified sample of a search space, every candidate is trained ``--epochs`` epochs on one
proxy (``--proxy PATH``, or ``ipc`` random real images per class drawn here) and tested, by

- the reference: :func:`reference_sweep` below, one candidate after another with a plain PyTorch
  loop (``nn.Module``, ``torch.optim.SGD``, the protocol of ``nas_proxy.train``), as research code
  does it; and
- the project's evaluator, ``nas_proxy.evaluate.evaluate(..., trainer=...)`` (what ``nas-proxy
  evaluate`` runs, rows written to a results store), in variants ``<trainer>:<n_jobs>``: trainer
  ``plain`` (``nas_proxy.train.train_and_evaluate``), ``fast``
  (``nas_proxy.plan.train_and_evaluate_fast``) or ``grouped`` (``evaluate(batch_candidates=True)``:
  candidates of equal depth, width and pooling as one stacked network, the GPU path), ``n_jobs``
  worker processes of one torch thread.

Each side runs in a fresh Python process, so its peak memory (``ru_maxrss`` of the process, and of
its largest worker process; ``torch.cuda.max_memory_allocated`` on a GPU) is its own. The timed part
is the training sweep (the ``evaluate`` call, worker start-up included), not the data loading.
Every variant's accuracies are checked against the reference's, and the script prints per variant
``RESULT sweep-<variant> ratio=<reference seconds / variant seconds> equal=yes|no``, its
candidates per minute, and the headline ``RESULT sweep ratio=<reference seconds / fastest
variant seconds> equal=yes|no``. Records go to ``results/benchmarks/sweep-<machine>[-quick].{md,json}``.

    python benchmarks/sweep.py --quick                                   # a few minutes on a 2-core CPU
    python benchmarks/sweep.py --sample 72                               # the protocol: 100 epochs (hours on a CPU)
    python benchmarks/sweep.py --space convnet720-narrow --sample 72     # the protocol on a CPU-sized space
    python benchmarks/sweep.py --sample 720 --variants plain:1,grouped:1  # on a GPU: the whole space
    python benchmarks/sweep.py --smoke                                   # seconds: tiny synthetic data

Timings on a shared machine move with its load: the load average is printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas_proxy.cli import OneLineParser
from nas_proxy.data import Split, load_dataset, make_synthetic
from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError
from nas_proxy.models import build_model
from nas_proxy.space import ArchSpec
from nas_proxy.stacked import FastOptions, group_key
from nas_proxy.train import TrainConfig

from _common import Comparison, describe, machine, record_target, write_record

TRAINERS: dict[str, str] = {
    "plain": "nas_proxy.train.train_and_evaluate",
    "fast": "nas_proxy.plan.train_and_evaluate_fast",
    # The evaluator's batch_candidates: candidates of equal depth, width and pooling as one stacked
    # network (nas_proxy.plan.train_candidates); a run that fails there is retried with the fast trainer.
    "grouped": "nas_proxy.plan.train_and_evaluate_fast",
}
_CHILD_TAG = "SWEEP-CHILD-RESULT "


@dataclass(frozen=True)
class Variant:
    """One way of running the sweep through the evaluator: a trainer and a number of workers."""

    trainer: str
    n_jobs: int

    @property
    def label(self) -> str:
        return f"{self.trainer}-j{self.n_jobs}"


def parse_variants(text: str) -> list[Variant]:
    """``"plain:1,fast:1,fast:2"`` -> variants; raises naming the bad item."""
    out = []
    for item in text.split(","):
        name, _, jobs = item.strip().partition(":")
        if name not in TRAINERS:
            raise NasProxyError(f"unknown trainer {name!r} in --variants; valid: {', '.join(TRAINERS)}")
        try:
            n = int(jobs or "1")
        except ValueError as exc:
            raise NasProxyError(f"bad worker count {jobs!r} in --variants item {item!r}") from exc
        if n < 1:
            raise NasProxyError(f"worker count must be at least 1 in --variants item {item!r}")
        out.append(Variant(name, n))
    return out


# ----------------------------------------------------------------------------- the reference loop


def reference_sweep(arch_ids: list[str], train: Split, test: Split, cfg: TrainConfig, seed: int) -> dict[str, float]:
    """Every candidate in turn: build, train with a plain SGD loop, test. Accuracy by id (NaN: diverged).

    The protocol of ``nas_proxy.train``: SGD with momentum and weight decay, the seed's shuffled
    order, lr x0.1 from half the steps on, test accuracy in eval mode.
    """
    accuracies: dict[str, float] = {}
    for arch in arch_ids:
        model = build_model(arch, train.in_channels, train.image_size, train.num_classes, seed=seed).to(train.device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        n = len(train)
        total = cfg.epochs * math.ceil(n / cfg.batch_size)
        step, finite = 0, True
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen).to(train.device)
            epoch_loss = torch.zeros((), device=train.device)
            for i in range(0, n, cfg.batch_size):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (0.1 if 0 < int(total * cfg.decay_at) <= step else 1.0)
                idx = order[i : i + cfg.batch_size]
                loss = loss_fn(model(train.images[idx]), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                epoch_loss += loss.detach()
                step += 1
            if not torch.isfinite(epoch_loss):
                finite = False
                break
        if not finite:
            accuracies[arch] = float("nan")
            continue
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test), 256):  # the authors' test loader: batches of 256
                correct += int((model(test.images[i : i + 256]).argmax(1) == test.labels[i : i + 256]).sum())
        accuracies[arch] = correct / len(test)
    return accuracies


# ----------------------------------------------------------------------------- one side, in its own process


def _load_test(job: dict[str, Any], device: torch.device) -> Split:
    """The test split both sides score on (the CLI path loads the whole dataset; so does this)."""
    if job["synthetic"]:
        _, test = make_synthetic(**job["synthetic"])
    else:
        _, test = load_dataset(job["dataset"])
    if job["test_images"] is not None and job["test_images"] < len(test):
        test = test.random_subset(job["test_images"], seed=0)
    return test.to(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory (MB) of this process and of its largest finished child; GPU peak."""
    from joblib.externals.loky import reusable_executor

    # Workers count in RUSAGE_CHILDREN only once they have exited and been reaped; a side that
    # started none has no executor (asking for one here would start workers).
    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)
    unit = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2  # ru_maxrss: KB on Linux, bytes on macOS
    out: dict[str, float] = {"rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit}
    # Without workers RUSAGE_CHILDREN holds only helper processes of imports (torch starts one).
    if executor is not None:
        out["rss_workers_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 1024**2
    return out


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """Run one side of the comparison (``job["variant"]`` None: the reference) and measure it."""
    from nas_proxy.evaluate import evaluate, proxy_source
    from nas_proxy.proxies import load_proxy
    from nas_proxy.store import ResultsStore

    device = resolve_device(job["device"])
    test = _load_test(job, device)
    proxy = load_proxy(job["proxy"])
    cfg = TrainConfig(epochs=job["epochs"])
    ids: list[str] = job["ids"]
    seed: int = job["seed"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if job["variant"] is None:
        train = proxy.as_split(device)
        start = time.perf_counter()
        accs = reference_sweep(ids, train, test, cfg, seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        statuses = {a: "ok" if math.isfinite(v) else "diverged" for a, v in accs.items()}
    else:
        trainer_path = TRAINERS[job["variant"]["trainer"]]
        module, _, name = trainer_path.rpartition(".")
        trainer = getattr(__import__(module, fromlist=[name]), name)
        source = proxy_source(proxy, cfg, path=job["proxy"])
        source = replace(source, split=source.split.to(device))
        with tempfile.TemporaryDirectory(prefix="nas-proxy-sweep-") as out_dir:
            start = time.perf_counter()
            evaluate(
                ids,
                [source],
                test,
                out_dir=out_dir,
                seeds=(seed,),
                n_jobs=job["variant"]["n_jobs"],
                device=device,
                progress=False,
                trainer=trainer,
                batch_candidates=job["variant"]["trainer"] == "grouped",
                fast_options=FastOptions.parse(job["fast_options"]),
            )
            seconds = time.perf_counter() - start
            rows = ResultsStore(out_dir).rows()
        accs = {r.arch_id: r.accuracy for r in rows}
        statuses = {r.arch_id: r.status for r in rows}
        reasons = [r.reason for r in rows if r.status == "failed"]
        if reasons:
            print(f"{len(reasons)} failed runs, first: {reasons[0]}", file=sys.stderr)
    return {
        "seconds": seconds,
        "accuracies": accs,
        "statuses": statuses,
        "threads": torch.get_num_threads(),
        **_peak_memory(device),
    }


def spawn(job: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_child` in a fresh interpreter (same environment) and return what it measured."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_CHILD_TAG):
            result: dict[str, Any] = json.loads(line[len(_CHILD_TAG) :])
            if proc.stderr.strip():
                print(proc.stderr.strip()[-2000:], file=sys.stderr)
            return result
    raise RuntimeError(f"sweep child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


# ----------------------------------------------------------------------------- parent side


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare_proxy(args: argparse.Namespace, synthetic: dict[str, Any] | None, tmp: Path) -> tuple[str, str]:
    """The proxy file both sides train on, and a description: ``--proxy``, or random images drawn now."""
    from nas_proxy.proxies import get_builder, load_proxy, save_proxy

    if args.proxy is not None:
        proxy = load_proxy(args.proxy)  # fails here, with the file named, if it is not a proxy
        m = proxy.manifest
        return str(args.proxy), f"{args.proxy} ({m.method}, ipc {m.ipc}, {m.dataset})"
    if synthetic is not None:
        train, _ = make_synthetic(**synthetic)
    else:
        train, _ = load_dataset(args.dataset)
    proxy = get_builder("random", ipc=args.ipc, seed=args.seed).build(train.to("cpu"))
    path = save_proxy(proxy, tmp / f"random-ipc{args.ipc}-s{args.seed}.npz")
    return str(path), f"random, ipc {args.ipc}, seed {args.seed}, drawn from {train.dataset} for this run"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=(__doc__ or "").split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="convnet720-narrow, 12 candidates, 10 epochs, 2000 tests")
    mode.add_argument("--smoke", action="store_true", help="seconds: tiny synthetic data and space, record in /tmp")
    p.add_argument("--proxy", type=Path, default=None, help="a proxy .npz (default: random images, --ipc a class)")
    p.add_argument("--ipc", type=int, default=10, help="images per class of the random proxy (default 10)")
    p.add_argument("--dataset", default="fashionmnist", help="dataset of the proxy and test set")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of --dataset")
    p.add_argument("--space", default=None, help="search space (default convnet720; quick: convnet720-narrow)")
    p.add_argument("--sample", type=int, default=None, help="stratified sample size (default 72; quick 12)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per candidate (default 100; quick 10)")
    p.add_argument("--test-images", type=int, default=None, help="test images (default all; quick 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, the proxy and the training")
    p.add_argument(
        "--variants",
        default=None,
        help="evaluator variants trainer:n_jobs, trainer plain|fast|grouped (default plain:1,fast:1, "
        "and plain/fast:<cores> on a CPU, grouped:1 on a GPU)",
    )
    p.add_argument("--tolerance", type=float, default=0.005, help="accuracy difference still called equal")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=None, help="record folder (default results/benchmarks; smoke: /tmp)")
    p.add_argument(
        "--fast-options",
        default="none",
        help="speed switches of grouped runs: channels_last, bf16, compile[=MODE] (GPU options; default none)",
    )
    p.add_argument("--tag", default="", help="appended to the record's file name (keeps other records)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one side, as JSON
    args = p.parse_args(argv)
    defaults = (
        {"space": "tiny", "sample": 3, "epochs": 1, "test_images": None}
        if args.smoke
        else {"space": "convnet720-narrow", "sample": 12, "epochs": 10, "test_images": 2000}
        if args.quick
        else {"space": "convnet720", "sample": 72, "epochs": 100, "test_images": None}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("ipc", "sample", "epochs", "test_images"):
        value = getattr(args, key)
        if value is not None and value < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
    try:
        FastOptions.parse(args.fast_options)
    except NasProxyError as exc:
        p.error(f"--fast-options: {exc}")
    if args.tag and not all(c.isalnum() or c in "._-" for c in args.tag):
        p.error(f"--tag may hold letters, digits, '.', '_' and '-' only, got {args.tag!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(_CHILD_TAG + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    try:
        return run(args)
    except NasProxyError as exc:  # a bad space, proxy, device or variant: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from nas_proxy.space import load_space

    device = resolve_device(args.device)
    # Grouping loses on a CPU (0.3-0.6x measured): there ask for it with --variants.
    workers = f",plain:{_cores()},fast:{_cores()}" if _cores() > 1 else ""
    extra = workers if device.type == "cpu" else ",grouped:1"
    variants = parse_variants(args.variants or "plain:1,fast:1" + extra)
    if device.type != "cpu" and any(v.n_jobs > 1 for v in variants):
        print("note: n_jobs > 1 on a GPU starts one CUDA context per worker", file=sys.stderr)
    space = load_space(args.space)
    ids = [s.id for s in space.select(sample=min(args.sample, len(space)), seed=args.seed)]
    synthetic: dict[str, Any] | None = None
    if args.smoke:
        synthetic = {"num_classes": 10, "train_per_class": 12, "test_per_class": 5, "size": 16}
    elif args.synthetic:
        synthetic = {"num_classes": 10, "train_per_class": 50, "test_per_class": 100}
    info = machine(device)
    print(describe(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="nas-proxy-sweep-proxy-") as tmp:
        proxy_path, proxy_text = prepare_proxy(args, synthetic, Path(tmp))
        print(f"proxy: {proxy_text}; {len(ids)} candidates of {space.name}, {args.epochs} epochs", flush=True)
        job = {
            "device": str(device),
            "synthetic": synthetic,
            "dataset": args.dataset,
            "test_images": args.test_images,
            "proxy": proxy_path,
            "epochs": args.epochs,
            "ids": ids,
            "seed": args.seed,
            "variant": None,
            "fast_options": args.fast_options,
        }
        ref = spawn(job)
        print(f"reference loop: {ref['seconds']:.2f} s, peak RSS {ref['rss_self_mb']:.0f} MB", flush=True)
        measured: list[tuple[Variant, dict[str, Any]]] = []
        for v in variants:
            out = spawn({**job, "variant": {"trainer": v.trainer, "n_jobs": v.n_jobs}})
            measured.append((v, out))
            print(f"{v.label}: {out['seconds']:.2f} s, {60 * len(ids) / out['seconds']:.1f} candidates/min", flush=True)

    ref_acc: dict[str, float] = ref["accuracies"]
    comparisons: list[Comparison] = []
    for v, out in measured:
        diffs, mismatched = [], []
        for arch in ids:
            a, b = ref_acc.get(arch, float("nan")), out["accuracies"].get(arch, float("nan"))
            if math.isfinite(a) and math.isfinite(b):
                diffs.append(abs(a - b))
                if abs(a - b) > args.tolerance:
                    mismatched.append(arch)
            elif math.isfinite(a) or math.isfinite(b) or out["statuses"].get(arch) == "failed":
                mismatched.append(arch)  # one side diverged or failed, or a run is missing
        plain_same_jobs = next((o for w, o in measured if w.trainer == "plain" and w.n_jobs == v.n_jobs), None)
        details: dict[str, Any] = {
            "candidates_per_min": round(60 * len(ids) / out["seconds"], 2),
            "max_acc_diff": round(max(diffs, default=0.0), 4),
            "mismatched": len(mismatched),
            "peak_rss_mb": round(out["rss_self_mb"]),
        }
        if "rss_workers_mb" in out:
            details["peak_worker_rss_mb"] = round(out["rss_workers_mb"])
        if "cuda_max_allocated_mb" in out:
            details["cuda_peak_mb"] = round(out["cuda_max_allocated_mb"])
        if v.trainer == "grouped":  # one stacked network per group_key among the candidates
            details["groups"] = len({group_key(ArchSpec.from_id(a)) for a in ids})
        if v.trainer != "plain" and plain_same_jobs is not None:
            details["vs_plain_same_jobs"] = round(plain_same_jobs["seconds"] / out["seconds"], 2)
        comparisons.append(Comparison(f"sweep-{v.label}", ref["seconds"], out["seconds"], not mismatched, details))
    fast = [c for (v, _), c in zip(measured, comparisons, strict=True) if v.trainer != "plain"] or comparisons
    best = min(fast, key=lambda c: c.ours_s)
    headline = Comparison(
        "sweep", best.reference_s, best.ours_s, all(c.equal for c in comparisons), {"fastest": best.name[6:]}
    )
    comparisons.insert(0, headline)

    info_after = machine(device)
    ref_cpm = 60 * len(ids) / ref["seconds"]
    notes = [
        f"proxy: {proxy_text}; test accuracy on {args.test_images or 'all'} test images",
        f"candidates: stratified sample of {len(ids)} of {space.name} (seed {args.seed}), {args.epochs} epochs each",
        f"reference: the plain loop in this file, {ref['threads']} torch threads: {ref['seconds']:.2f} s, "
        f"{ref_cpm:.1f} candidates/min, peak RSS {ref['rss_self_mb']:.0f} MB; it tests in batches of 256 "
        "(the authors' test loader), the evaluator in cache-sized ones (train.eval_batch_size)"
        + (f", CUDA peak {ref['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in ref else ""),
        "variants: nas_proxy.evaluate.evaluate(trainer=plain|fast, n_jobs=N), one torch thread per worker; "
        "grouped: evaluate(batch_candidates=True), candidates of one group_key (depth, width, pooling) as one "
        "stacked network (groups: how many networks); "
        "seconds of the evaluate call (worker start-up and the results store included), data loading excluded",
        "each side in a fresh process, so peak RSS (ru_maxrss) is its own; peak_worker_rss_mb: the largest "
        "reaped child's ru_maxrss, which Linux counts from the fork, so it is at least the parent's size then",
        f"equal: every candidate's accuracy within {args.tolerance} of the reference's (diverged on both sides "
        "counts as equal); the headline's equal needs every variant equal",
        f"load average after the run: {info_after['load_average']}",
    ]
    if args.smoke:
        notes.append("--smoke: a wiring check on tiny data; its seconds mean nothing")
    settings = {
        "space": space.name,
        "sample": len(ids),
        "epochs": args.epochs,
        "test_images": args.test_images,
        "variants": ",".join(f"{v.trainer}:{v.n_jobs}" for v in variants),
        "quick": args.quick,
        "smoke": args.smoke,
        "synthetic": args.synthetic,
        "seed": args.seed,
        "fast_options": args.fast_options,
    }
    out_dir, suffix = record_target(args.out, smoke=args.smoke, quick=args.quick, synthetic=args.synthetic)
    suffix += f"-{args.tag}" if args.tag else ""
    path = write_record("sweep", info, comparisons, settings, notes, out_dir=out_dir, suffix=suffix)
    print(f"wrote {path}")
    print(
        f"candidates/min: reference {ref_cpm:.1f}, "
        + ", ".join(f"{v.label} {60 * len(ids) / o['seconds']:.1f}" for v, o in measured)
    )
    for c in comparisons:
        print(c.result_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
