"""The GPU check: one prepared command that measures the GPU paths the day a device is lent.

On one GPU, in under 8 minutes in all, it

1. **sweep**: trains all 720 ``convnet720`` candidates x 100 epochs on a 100-image proxy (random,
   ipc 10, Fashion-MNIST) through the evaluator's ``auto`` plan (seeds and candidates stacked),
   and times it (target: under 60 s);
2. **check**: retrains a stratified sample of those candidates one by one (the plain loop) and
   compares accuracies (GPU kernels are not bit-deterministic: the difference is reported in
   test images, with the spread two one-by-one runs of the same seed show beside it);
3. **dc**: times DC ipc-10 iterations of ours against the authors' loop (``benchmarks/dc_step.py``'s
   reference, target 3x) and checks that their losses agree;

and writes ``gpu_check-<machine>.{md,json}`` into ``--out`` (default ``results/benchmarks``).

    python benchmarks/gpu_check.py                    # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/g   # seconds on a CPU: tiny sizes, same code

``--dry-run`` runs every stage at toy sizes (the ``tiny`` space, synthetic data, 2 epochs, one DC
iteration) on whatever device there is, so the test suite keeps the script from rotting; its
figures mean nothing. The record is rewritten after each stage, so a run cut short by a time
limit still leaves what it measured; ``--skip`` leaves stages out.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas_proxy.cli import OneLineParser
from nas_proxy.data import Split, load_dataset, make_synthetic
from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError
from nas_proxy.evaluate import evaluate, proxy_source
from nas_proxy.proxies import ProxySet, get_builder
from nas_proxy.space import load_space
from nas_proxy.store import ResultsStore
from nas_proxy.train import TrainConfig, train_and_evaluate

from _common import RESULTS_DIR, Comparison, Timer, describe, machine, machine_slug

SWEEP_TARGET_S = 60.0
DC_TARGET_RATIO = 3.0


@dataclass(frozen=True)
class Sizes:
    """How big each stage is: the real check, or the dry run's toy sizes."""

    space: str
    dataset: str
    epochs: int
    check_sample: int
    dc_iterations: int
    dc_outer: int | None
    dc_inner: int | None
    dc_arch: str


REAL = Sizes("convnet720", "fashionmnist", 100, 24, 3, None, None, "ConvNet-D3-W128-AR-IN-AP")
DRY = Sizes("tiny", "synthetic", 2, 3, 1, 1, 1, "ConvNet-D1-W8-AR-IN-AP")


@dataclass
class Stage:
    """One stage's outcome, as the record shows it."""

    name: str
    seconds: float = math.nan
    target: str = ""
    met: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def _data(sizes: Sizes, device: torch.device) -> tuple[Split, Split]:
    if sizes.dataset == "synthetic":
        train, test = make_synthetic(num_classes=10, train_per_class=20, test_per_class=5, seed=0)
        return train.to(device), test.to(device)
    return load_dataset(sizes.dataset, device=device)


def _proxy(sizes: Sizes, train: Split) -> ProxySet:
    """The sweep's proxy: 10 random real images a class (2 in the dry run's tiny data)."""
    return get_builder("random", ipc=10 if sizes.dataset != "synthetic" else 2, seed=0).build(train)


def sweep(sizes: Sizes, proxy: ProxySet, test: Split, out: Path) -> tuple[Stage, dict[str, float]]:
    """Every candidate of the space on a 100-image proxy through the evaluator's auto plan."""
    space = load_space(sizes.space)
    ids = [s.id for s in space]
    source = proxy_source(proxy, TrainConfig(epochs=sizes.epochs))
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=out))
    with Timer() as t:
        res = evaluate(ids, [source], test, out_dir=run_dir, seeds=[0], progress=False, device=test.device)
        if test.device.type == "cuda":
            torch.cuda.synchronize(test.device)
    rows = ResultsStore(run_dir).rows()
    accs = {r.arch_id: r.accuracy for r in rows}
    stage = Stage(
        "sweep",
        t.seconds,
        f"< {SWEEP_TARGET_S:.0f} s",
        t.seconds < SWEEP_TARGET_S,
        {
            "candidates": len(ids),
            "epochs": sizes.epochs,
            "proxy_images": len(proxy.as_split()),
            "ok": res.ok,
            "diverged": res.diverged,
            "failed": res.failed,
            "candidates_per_minute": round(60 * len(ids) / t.seconds, 1),
        },
    )
    return stage, accs


def check(sizes: Sizes, proxy_set: ProxySet, test: Split, swept: dict[str, float]) -> Stage:
    """A stratified sample retrained one by one with the plain loop: do the stacked results agree?"""
    space = load_space(sizes.space)
    sample = [s.id for s in space.sample(min(sizes.check_sample, len(space)), 0)]
    proxy = proxy_set.as_split().to(test.device)
    config = TrainConfig(epochs=sizes.epochs)
    diffs, twice = [], []
    with Timer() as t:
        for arch in sample:
            alone = train_and_evaluate(arch, proxy, test, config, 0)
            if math.isfinite(alone.accuracy) and math.isfinite(swept.get(arch, math.nan)):
                diffs.append(abs(alone.accuracy - swept[arch]) * len(test))
        # The plain loop's own spread on this device: one candidate twice, same seed.
        again = [train_and_evaluate(sample[0], proxy, test, config, 0).accuracy for _ in range(2)]
        twice.append(abs(again[0] - again[1]) * len(test))
    return Stage(
        "check",
        t.seconds,
        "stacked within the plain loop's own spread (+2 images)",
        bool(diffs) and max(diffs) <= max(twice) + 2,
        {
            "candidates": len(sample),
            "compared": len(diffs),
            "max_diff_images": max(diffs, default=math.nan),
            "mean_diff_images": round(sum(diffs) / len(diffs), 2) if diffs else math.nan,
            "plain_loop_twice_images": max(twice),
        },
    )


def dc(sizes: Sizes, train: Split) -> tuple[Stage, Comparison | None]:
    """DC ipc 10 iterations: ours against the authors' loop (dc_step's reference), same seed."""
    import dc_step

    outer, inner = dc_step.default_loops(10)
    s = dc_step.DCSettings(
        ipc=10 if sizes.dataset != "synthetic" else 2,
        iterations=sizes.dc_iterations,
        arch=sizes.dc_arch,
        outer_loop=sizes.dc_outer or outer,
        inner_loop=sizes.dc_inner or inner,
    )
    with Timer() as t:
        (cmp,) = dc_step.compare(train, s, rtol=1e-3, dtypes=["float32"])
    stage = Stage(
        "dc",
        t.seconds,
        f">= {DC_TARGET_RATIO:.0f}x the authors' loop",
        cmp.ratio >= DC_TARGET_RATIO,
        {"ratio": round(cmp.ratio, 2), "equal": cmp.equal, **cmp.details},
    )
    return stage, cmp


def write(stages: list[Stage], info: dict[str, Any], sizes: Sizes, dry: bool, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"gpu_check-{machine_slug(info)}{'-dry-run' if dry else ''}"
    lines = [
        "# gpu_check",
        "",
        f"Machine: {describe(info)}  ",
        f"Run: `python {' '.join(sys.argv)}`" + (" (dry run: toy sizes, the figures mean nothing)" if dry else ""),
        "",
        "| stage | seconds | target | met | figures |",
        "|---|---|---|---|---|",
    ]
    for st in stages:
        met = "n/a" if st.met is None else "yes" if st.met else "no"
        figures = ", ".join(f"{k}={v}" for k, v in st.figures.items())
        lines.append(f"| {st.name} | {st.seconds:.1f} | {st.target} | {met} | {figures} |")
    lines += ["", f"Sizes: {sizes}", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    record = {"machine": info, "dry_run": dry, "sizes": sizes.__dict__, "stages": [st.__dict__ for st in stages]}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="gpu_check", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the record goes (default results/benchmarks)")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on any device: checks the script, not the GPU")
    p.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, cpu")
    p.add_argument("--skip", default="", help="stages to skip, comma-separated: sweep, check, dc")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        if device.type != "cuda" and not args.dry_run:
            raise NasProxyError(f"no GPU here (device {device}); run with --dry-run to check the script on a CPU")
        sizes = DRY if args.dry_run else REAL
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        unknown = skip - {"sweep", "check", "dc"}
        if unknown:
            raise NasProxyError(f"unknown stage {sorted(unknown)[0]!r}; valid: sweep, check, dc")
        start = time.perf_counter()
        info = machine(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
        print(describe(info), flush=True)
        train, test = _data(sizes, device)
        proxy = _proxy(sizes, train)
        stages: list[Stage] = []
        swept: dict[str, float] = {}
        path = args.out

        def done(stage: Stage) -> Path:
            stages.append(stage)
            met = "yes" if stage.met else "no"
            print(f"RESULT gpu-{stage.name} seconds={stage.seconds:.1f} met={met} {stage.figures}")
            return write(stages, info, sizes, args.dry_run, args.out)  # after each stage: a cut run keeps it

        if "sweep" not in skip:
            stage, swept = sweep(sizes, proxy, test, args.out)
            path = done(stage)
        if "check" not in skip and swept:
            path = done(check(sizes, proxy, test, swept))
        if "dc" not in skip:
            path = done(dc(sizes, train)[0])
        print(f"record: {path} ({time.perf_counter() - start:.0f} s in all)")
        return 0
    except NasProxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
