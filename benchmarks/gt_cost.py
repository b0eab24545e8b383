"""The training cost of a stored ground truth, retimed on a quiet machine.

A whole-data run's ``seconds`` is only a cost measurement if nothing else shared the cores while
it trained. This script times every candidate of a run directory's whole-data rows the way they
trained (one-thread worker processes, ``--n-jobs`` at a time, the workers' micro-batch budget, the
stored training config) for ``--steps`` SGD steps after ``--warmup`` untimed ones, predicts each
run's seconds as steps x seconds per step (a stored run's ``seconds`` leaves out its learning
curve's test passes, so steps are the whole cost), and sets the prediction beside every stored
row. Rows whose stored seconds are close to the prediction were trained on a quiet machine;
the others were slowed by other work, and the prediction is their cost.

    python benchmarks/gt_cost.py results/cpu-reference --out results/cpu-reference/gt_cost

It writes ``<out>.md`` and ``<out>.json`` and prints the totals. The machine must be quiet while
it runs (the load average is recorded beside the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nas_proxy.data import Split, load_dataset
from nas_proxy.microbatch import KEPT_MEMORY_MICRO_BATCH_BYTES, keep_freed_memory
from nas_proxy.models import build_model
from nas_proxy.store import ResultsStore
from nas_proxy.train import TrainConfig, train_model

from _common import describe, machine

# Stored seconds within this factor of the prediction count as quiet: the spread of repeated
# quiet timings of one candidate on this host is a few percent, contention doubles them.
QUIET = 1.25


def time_steps(arch_id: str, train: Split, config: TrainConfig, warmup: int, steps: int) -> float:
    """Seconds per SGD step of ``arch_id`` on ``train`` in a one-thread worker like the ground truth's."""
    torch.set_num_threads(1)
    keep_freed_memory()
    model = build_model(arch_id, train.in_channels, train.image_size, train.num_classes, seed=0)
    train_model(model, train, replace(config, max_steps=warmup), 0, micro_batch_bytes=KEPT_MEMORY_MICRO_BATCH_BYTES)
    stats = train_model(
        model, train, replace(config, max_steps=steps), 1, micro_batch_bytes=KEPT_MEMORY_MICRO_BATCH_BYTES
    )
    return stats.seconds / stats.steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory with whole-data rows (source 'full')")
    p.add_argument("--steps", type=int, default=100, help="timed SGD steps per candidate")
    p.add_argument("--warmup", type=int, default=10, help="untimed SGD steps first")
    p.add_argument("--n-jobs", type=int, default=2, help="worker processes, as the ground truth ran")
    p.add_argument("--limit", type=int, default=None, help="only the first N candidates (a smoke run)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, required=True, help="record path without suffix")
    args = p.parse_args(argv)

    store = ResultsStore(args.run_dir)
    protocol = store.load_protocol()
    full = protocol.config("full") if protocol is not None else None
    if protocol is None or full is None:
        print(f"error: {args.run_dir} has no whole-data config in protocol.json", file=sys.stderr)
        return 2
    config = TrainConfig(**{k: v for k, v in full.values.items() if k in TrainConfig.__dataclass_fields__})
    config = config.without_curve()
    rows = [r for r in store.rows() if r.source_id == "full" and r.status == "ok"]
    if not rows:
        print(f"error: {args.run_dir} has no finished whole-data rows", file=sys.stderr)
        return 2
    arch_ids = sorted({r.arch_id for r in rows})[: args.limit]
    train, _ = load_dataset(rows[0].dataset, args.data_root)
    info = machine(torch.device("cpu"))
    started = time.perf_counter()
    per_step = Parallel(n_jobs=args.n_jobs)(
        delayed(time_steps)(a, train, config, args.warmup, args.steps) for a in arch_ids
    )
    wall = time.perf_counter() - started
    info["load_average_after"] = machine(torch.device("cpu"))["load_average"]

    table: list[dict[str, Any]] = []
    for arch_id, sps in zip(arch_ids, per_step, strict=True):
        for r in sorted((r for r in rows if r.arch_id == arch_id), key=lambda r: r.seed):
            predicted = sps * r.steps
            table.append(
                {
                    "arch_id": arch_id,
                    "seed": r.seed,
                    "steps": r.steps,
                    "s_per_step": sps,
                    "predicted_s": predicted,
                    "stored_s": r.seconds,
                    "stored_over_predicted": r.seconds / predicted,
                    "quiet": 1 / QUIET <= r.seconds / predicted <= QUIET,
                    "started_at": r.started_at,
                }
            )
    quiet = [t for t in table if t["quiet"]]
    ratios = [t["stored_over_predicted"] for t in quiet]
    summary = {
        "rows": len(table),
        "candidates": len(arch_ids),
        "quiet_rows": len(quiet),
        "quiet_ratio_median": statistics.median(ratios) if ratios else None,
        "quiet_ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "stored_total_min": sum(t["stored_s"] for t in table) / 60,
        "predicted_total_min": sum(t["predicted_s"] for t in table) / 60,
        "retime_wall_s": wall,
    }
    record = {
        "run_dir": str(args.run_dir),
        "command": " ".join(["python", *sys.argv]),
        "machine": info,
        "config": config.fields(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "n_jobs": args.n_jobs, "quiet_factor": QUIET},
        "summary": summary,
        "rows": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [
        f"# Ground-truth cost, retimed: {args.run_dir}",
        "",
        f"Machine: {describe(info)}; load average after: {info['load_average_after']}  ",
        f"Run: `{record['command']}`; {args.steps} timed steps after {args.warmup} per candidate, "
        f"{args.n_jobs} one-thread workers, {wall:.0f} s wall",
        "",
        f"- {summary['rows']} stored whole-data runs of {summary['candidates']} candidates: "
        f"{summary['stored_total_min']:.1f} min of training as stored, "
        f"{summary['predicted_total_min']:.1f} min predicted from the quiet timing.",
        f"- {summary['quiet_rows']} rows within a factor {QUIET} of the prediction (trained on a quiet machine): "
        f"stored / predicted median {summary['quiet_ratio_median'] or float('nan'):.2f}"
        + (
            f", range {summary['quiet_ratio_range'][0]:.2f}-{summary['quiet_ratio_range'][1]:.2f}"
            if ratios
            else ""
        )
        + ": how well the prediction matches an undisturbed run.",
        "",
        "| candidate | seed | steps | s/step (quiet) | predicted s | stored s | stored / predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['arch_id']} | {t['seed']} | {t['steps']} | {t['s_per_step']:.4f} | {t['predicted_s']:.0f} "
            f"| {t['stored_s']:.0f} | {t['stored_over_predicted']:.2f}{'' if t['quiet'] else ' (slowed)'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(
        f"stored {summary['stored_total_min']:.1f} min, predicted {summary['predicted_total_min']:.1f} min; "
        f"{summary['quiet_rows']} of {summary['rows']} rows quiet (median ratio {summary['quiet_ratio_median']})"
    )
    print(f"written: {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
