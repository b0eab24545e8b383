"""Architecture search at equal training budget: TPE on a DC proxy vs TPE on a random proxy vs random search.

Every strategy is an Optuna study of ``--n-trials`` trials, each training one candidate of
``--space`` for ``--epochs`` epochs on its proxy (no pruning, so the budget is exactly
trials x epochs x proxy size; repeats of an architecture reuse the stored value and cost
nothing). A strategy is ``SAMPLER:SOURCE``: ``tpe:dc`` is TPE on the DC proxy, ``random:dc``
is random search scored on the same proxy. The figure of merit is the whole-data test accuracy
of the architecture each study ranks best: read from a ground-truth table (``--ground-truth``,
the evaluator's ``results/groundtruth/*.csv``, mean over its seeds; also gives the rank among its
candidates and the regret to the best one). An architecture the table lacks (a table of a
sample of the space) is trained under the table's own protocol and placed where it would rank.
Without a table it is trained on a fixed random subset of the training set (``--refit-subset``,
``--refit-epochs``). Over ``--seeds``, each seeding the sampler and the training.

Writes ``results/search_budget.csv`` (one row per strategy and seed, appended as they finish;
a rerun skips rows already there) and ``results/search_budget.md`` (mean +- std per strategy,
the settings and the command). ``--quick`` writes ``results/search_budget-quick.*`` with tiny
settings in minutes: its numbers mean nothing.

Proxies: ``--proxy METHOD=PATH``, else ``results/proxies/fashionmnist-METHOD-ipcK-s0.npz``; a
missing random proxy is built (seconds), other methods must be built first
(``nas-proxy build --method dc --ipc 10``) or with ``--build-missing``.

    python benchmarks/search_budget.py --ground-truth results/groundtruth/fashionmnist-convnet720-narrow-e100.csv
    python benchmarks/search_budget.py --n-trials 30 --epochs 100 --seeds 0 1 2 --refit-subset 10000
    python benchmarks/search_budget.py --quick --strategies tpe:random,random:random
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nas_proxy.cli import OneLineParser
from nas_proxy.data import Split, load_dataset
from nas_proxy.errors import NasProxyError
from nas_proxy.groundtruth import load_ground_truth
from nas_proxy.proxies import BUILDERS, ProxySet, get_builder, load_proxy, save_proxy
from nas_proxy.search import (
    GroundTruthRanks,
    best_trials,
    create_study,
    list_samplers,
    make_objective,
    read_ground_truth,
    refit,
    trial_arch,
)
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.train import TrainConfig

from _common import append_csv_row, read_csv_rows

DATASET = "fashionmnist"
COLUMNS = (
    "strategy", "sampler", "source", "seed", "n_trials", "epochs", "trained", "best_arch", "proxy_acc",
    "whole_acc", "whole_from", "gt_rank", "gt_candidates", "gt_regret", "search_seconds", "settings",
)  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    sampler: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.sampler}:{self.source}"


def parse_strategies(text: str) -> list[Strategy]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        sampler, sep, source = item.partition(":")
        if not sep or sampler not in list_samplers() or sampler in ("grid", "nsga2"):
            raise NasProxyError(f"strategy {item!r} must be SAMPLER:PROXY with SAMPLER tpe or random, e.g. tpe:dc")
        out.append(Strategy(sampler, source))
    if not out:
        raise NasProxyError("no strategies given")
    return out


def proxy_paths(args: argparse.Namespace, methods: set[str]) -> dict[str, Path]:
    given = {}
    for item in args.proxy or []:
        method, sep, path = item.partition("=")
        if not sep:
            raise NasProxyError(f"--proxy expects METHOD=PATH, got {item!r}")
        given[method] = Path(path)
    return {m: given.get(m, Path("results/proxies") / f"{DATASET}-{m}-ipc{args.ipc}-s0.npz") for m in methods}


def get_proxy(method: str, path: Path, train: Split, args: argparse.Namespace) -> ProxySet:
    if path.exists():
        return load_proxy(path)
    if method != "random" and not args.build_missing:
        raise NasProxyError(
            f"no {method} proxy at {path}: build it (nas-proxy build --method {method} --ipc {args.ipc}), "
            f"pass --proxy {method}=PATH, or add --build-missing"
        )
    if method not in BUILDERS:
        raise NasProxyError(f"proxy method {method!r} is not available; valid: {', '.join(BUILDERS)}")
    print(f"building {method} proxy (ipc {args.ipc}) -> {path}", file=sys.stderr)
    proxy = get_builder(method, ipc=args.ipc, seed=0).build(train, progress=sys.stderr.isatty())
    save_proxy(proxy, path)
    return proxy


def settings_key(args: argparse.Namespace, proxies: dict[str, ProxySet]) -> str:
    blob = {
        "space": args.space, "n_trials": args.n_trials, "epochs": args.epochs, "test_subset": args.test_subset,
        "proxies": {m: p.id for m, p in sorted(proxies.items())},
        "whole": args.ground_truth or f"refit-{args.refit_subset}-e{args.refit_epochs}",
    }  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


def run_one(
    strategy: Strategy,
    seed: int,
    proxy: ProxySet,
    test: Split,
    whole: WholeData,
    args: argparse.Namespace,
) -> dict[str, Any]:
    space = load_space(args.space)
    objective = make_objective(proxy, test, space=space, epochs=args.epochs, seed=seed, device=args.device)
    study = create_study(space, strategy.sampler, "none", seed=seed)
    start = time.perf_counter()
    study.optimize(objective, n_trials=args.n_trials)
    seconds = time.perf_counter() - start
    trained = sum(1 for t in study.trials if "duplicate_of" not in t.user_attrs)
    top = best_trials(study, 1)
    row: dict[str, Any] = {
        "strategy": strategy.name, "sampler": strategy.sampler, "source": proxy.id, "seed": seed,
        "n_trials": args.n_trials, "epochs": args.epochs, "trained": trained, "search_seconds": round(seconds, 1),
    }  # fmt: skip
    if not top:
        return {**row, "best_arch": "", "whole_from": "no complete trial"}
    spec = trial_arch(top[0])
    acc, source = whole.accuracy(spec)
    row.update(best_arch=spec.id, proxy_acc=round(100 * top[0].values[0], 2), whole_acc=_pct(acc), whole_from=source)
    placed = whole.placement(spec.id, acc)
    if placed is not None and whole.gt is not None:
        row.update(gt_rank=placed[0], gt_candidates=len(whole.gt), gt_regret=_pct(placed[1]))
    return row


def _pct(x: float) -> float | str:
    return "" if math.isnan(x) else round(100 * x, 2)


class WholeData:
    """Whole-data accuracy of an architecture: the ground-truth table where it has the architecture,
    else a cached refit (by default under the ground truth's own protocol: all training images,
    its TrainConfig), so a table covering a sample of the space still scores every find."""

    def __init__(self, gt: GroundTruthRanks | None, train: Split, test: Split, args: argparse.Namespace) -> None:
        self.gt = gt
        self.train = train if args.refit_subset is None else train.random_subset(args.refit_subset, seed=0)
        self.test = test
        self.config = TrainConfig(epochs=args.refit_epochs)
        if gt is not None and args.refit_epochs_given is None and args.refit_subset is None:
            self.config = load_ground_truth(gt.path).config  # refits comparable with the table's rows
        self.cache: dict[str, float] = {}

    @property
    def refit_label(self) -> str:
        return f"refit {len(self.train)} imgs {self.config.epochs} ep"

    def accuracy(self, spec: ArchSpec) -> tuple[float, str]:
        if self.gt is not None and spec.id in self.gt.accuracy:
            return self.gt.accuracy[spec.id], "ground truth"
        if spec.id not in self.cache:
            (r,) = refit([spec], self.train, self.test, self.config, seed=0)
            self.cache[spec.id] = r.accuracy if r.status == "ok" else math.nan
        return self.cache[spec.id], self.refit_label

    def placement(self, arch_id: str, acc: float) -> tuple[int, float] | None:
        """(rank among the table's candidates, regret to its best); a refit ranks as if inserted."""
        gt = self.gt
        if gt is None or math.isnan(acc):
            return None
        rank = gt.rank[arch_id] if arch_id in gt.rank else 1 + sum(a > acc for a in gt.accuracy.values())
        return rank, max(gt.accuracy.values()) - acc


def write_markdown(path: Path, rows: list[dict[str, str]], args: argparse.Namespace, command: str) -> None:
    lines = [
        "# Architecture search at equal training budget",
        "",
        f"Command: `{command}`",
        "",
        f"Space {args.space}, {DATASET}, {args.n_trials} trials x {args.epochs} epochs per study (no pruning), "
        f"seeds {' '.join(map(str, args.seeds))}, scored on "
        f"{args.test_subset or 'all'} test images.",
        "Whole-data accuracy of the architecture each study ranks best "
        + (
            f"(ground truth {args.ground_truth}, mean over its seeds; an architecture the table lacks is trained "
            "under the table's protocol, and its rank is where it would stand among the table's candidates)."
            if args.ground_truth
            else f"(trained on {args.refit_subset or 'all'} training images for {args.refit_epochs} epochs)."
        ),
        "",
        "| strategy | proxy | seeds | whole-data acc % (mean +- std) | GT rank (mean) | regret % (mean) | "
        "architectures trained | search s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["strategy"] for r in rows):
        group = [r for r in rows if r["strategy"] == name]
        accs = [float(r["whole_acc"]) for r in group if r["whole_acc"]]
        ranks = [float(r["gt_rank"]) for r in group if r.get("gt_rank")]
        regrets = [float(r["gt_regret"]) for r in group if r.get("gt_regret")]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        acc = f"{statistics.mean(accs):.2f} +- {std:.2f}" if accs else "-"
        lines.append(
            f"| {name} | {group[0]['source']} | {len(group)} | {acc} | "
            f"{f'{statistics.mean(ranks):.1f}' if ranks else '-'} | "
            f"{f'{statistics.mean(regrets):.2f}' if regrets else '-'} | "
            f"{statistics.mean(int(r['trained']) for r in group):.1f} | "
            f"{statistics.mean(float(r['search_seconds']) for r in group):.0f} |"
        )
    lines += ["", "Per seed: the CSV next to this file.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings, minutes; numbers mean nothing")
    p.add_argument("--strategies", default="tpe:dc,tpe:random,random:dc", help="SAMPLER:PROXY,... (%(default)s)")
    p.add_argument("--proxy", action="append", metavar="METHOD=PATH", help="proxy file of a method")
    p.add_argument("--build-missing", action="store_true", help="build missing proxies with the builder's defaults")
    p.add_argument("--space", default="convnet720-narrow")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--n-trials", type=int, default=None, help="trials per study (default 30; quick 6)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 100; quick 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2; quick 0 1")
    p.add_argument("--test-subset", type=int, default=None, metavar="N", help="score on N test images (quick 500)")
    p.add_argument("--ground-truth", default=None, metavar="FILE", help="whole-data CSV with arch_id, accuracy")
    p.add_argument("--refit-subset", type=int, default=None, metavar="N", help="refit on N training images")
    p.add_argument("--refit-epochs", type=int, default=None, help="refit epochs (default 10; quick 1)")
    p.add_argument("--out", default=None, help="output stem (default results/search_budget[-quick])")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    quick = args.quick
    args.n_trials = args.n_trials or (6 if quick else 30)
    args.epochs = args.epochs or (3 if quick else 100)
    args.seeds = args.seeds or ([0, 1] if quick else [0, 1, 2])
    args.refit_epochs_given = args.refit_epochs
    args.refit_epochs = args.refit_epochs or (1 if quick else 10)
    if quick:
        args.test_subset = args.test_subset or 500
        args.refit_subset = args.refit_subset or 2000
    out = Path(args.out or ("results/search_budget-quick" if quick else "results/search_budget"))
    command = shlex.join(["python", "benchmarks/search_budget.py", *(sys.argv[1:] if argv is None else argv)])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        strategies = parse_strategies(args.strategies)
        train, test = load_dataset(DATASET, root=args.data_root, device=args.device)
        if args.test_subset is not None:
            test = test.random_subset(args.test_subset, seed=0)
        paths = proxy_paths(args, {s.source for s in strategies})
        proxies = {m: get_proxy(m, path, train, args) for m, path in paths.items()}
        for m, proxy in proxies.items():
            if proxy.manifest.dataset != DATASET:
                raise NasProxyError(f"proxy from another dataset: {paths[m]} is {proxy.manifest.dataset!r}")
        gt = read_ground_truth(args.ground_truth) if args.ground_truth else None
        whole = WholeData(gt, train, test, args)
        key = settings_key(args, proxies)
        csv_path = out.with_suffix(".csv")
        done = {(r["strategy"], r["seed"]) for r in read_csv_rows(csv_path) if r["settings"] == key}
        for seed in args.seeds:
            for s in strategies:
                if (s.name, str(seed)) in done:
                    continue
                row = run_one(s, seed, proxies[s.source], test, whole, args)
                row["settings"] = key
                append_csv_row(csv_path, row, COLUMNS)
                print(
                    f"{s.name:<14} seed {seed}: best {row['best_arch']}  proxy {row.get('proxy_acc', '-')} %  "
                    f"whole {row.get('whole_acc', '-')} %  rank {row.get('gt_rank', '-')}  "
                    f"[{row['trained']} trained, {row['search_seconds']} s]",
                    flush=True,
                )
        rows = [r for r in read_csv_rows(csv_path) if r["settings"] == key]
        write_markdown(out.with_suffix(".md"), rows, args, command)
        print(out.with_suffix(".md").read_text())
    except NasProxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are in the CSV; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
