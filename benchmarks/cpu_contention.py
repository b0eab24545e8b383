"""What a second core is worth: one one-thread training worker alone, beside a busy loop, beside a twin.

``train_batched.py``'s fast path on a CPU is one one-thread worker per core. Its ceiling against
the plain loop with all threads is set by how much the cores slow each other down: if a second
worker, or any busy process on the other core, slows a worker by a fraction ``s``, two workers
deliver ``2 / (1 + s)`` cores. This script measures ``s`` with the project's own worker code
(``train_many(..., strategy="stacked", stack_size=1)`` with one torch thread: 5 seeds of the
narrow candidate, 100 epochs on a 100-image proxy) in three settings, each in fresh processes:

- alone;
- beside a pure-Python busy loop (no memory traffic to speak of: what is left is the cores
  sharing a physical core or a power budget);
- beside a second identical worker (what ``train_many(n_jobs=2)`` does).

It prints the seconds, the slow-downs and ``RESULT contention-<setting> ratio=<alone / beside>
equal=yes|no`` (equal: the same accuracies in every setting), and writes
``results/benchmarks/cpu_contention-<machine>.{md,json}``.

    python benchmarks/cpu_contention.py            # about a minute on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas_proxy.cli import OneLineParser
from nas_proxy.plan import train_many
from nas_proxy.train import TrainConfig

from _common import Comparison, describe, machine, write_record

_TAG = "CONTENTION-CHILD "
_BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def child(arch: str, seeds: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of the one-thread worker's job, and its accuracies."""
    from train_batched import proxy_data

    torch.set_num_threads(1)
    train, test, _ = proxy_data(False, 2000, torch.device("cpu"))
    cfg = TrainConfig(epochs=epochs, batch_size=256)
    train_many(arch, train, test, TrainConfig(epochs=2, batch_size=256), [0], strategy="stacked", stack_size=1)
    times, accs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = train_many(arch, train, test, cfg, list(range(seeds)), strategy="stacked", stack_size=1)
        times.append(time.perf_counter() - start)
        accs = [o.accuracy for o in out]
    return {"seconds": min(times), "accuracies": accs}


def _spawn_child(args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--child", "--arch", args.arch, "--seeds", str(args.seeds)]
    cmd += ["--epochs", str(args.epochs), "--repeats", str(args.repeats)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"error: a worker process failed with exit code {proc.returncode}")
    line = next(x for x in out.splitlines() if x.startswith(_TAG))
    result: dict[str, Any] = json.loads(line[len(_TAG) :])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ConvNet-D3-W8-AR-IN-AP")
    p.add_argument("--seeds", type=int, default=5, help="seeds a worker trains (half of R=10)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="timed runs in each process; the best counts")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("seeds", "epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(_TAG + json.dumps(child(args.arch, args.seeds, args.epochs, args.repeats)), flush=True)
        return 0
    from nas_proxy.space import ArchSpec

    try:
        ArchSpec.from_id(args.arch)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = machine(torch.device("cpu"))
    print(describe(info), flush=True)
    alone = _collect(_spawn_child(args))
    busy = subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=3 * alone["seconds"] * args.repeats)])
    beside_busy = _collect(_spawn_child(args))
    busy.kill()
    busy.wait()
    twins = [_spawn_child(args), _spawn_child(args)]
    beside_twin = [_collect(p) for p in twins]
    comparisons = []
    for name, results in (("busy-loop", [beside_busy]), ("second-worker", beside_twin)):
        seconds = max(r["seconds"] for r in results)
        equal = all(r["accuracies"] == alone["accuracies"] for r in results)
        slow = seconds / alone["seconds"] - 1
        details = {"alone_s": round(alone["seconds"], 3), "slow_down": f"{100 * slow:.0f}%"}
        details["two_workers_worth_cores"] = round(2 / (1 + slow), 2)
        comparisons.append(Comparison(f"contention-{name}", alone["seconds"], seconds, equal, details))
        print(comparisons[-1].result_line(), details, flush=True)
    notes = [
        f"job: train_many({args.arch}, {args.seeds} seeds, {args.epochs} epochs, strategy='stacked', stack_size=1) "
        "with one torch thread on a 100-image Fashion-MNIST proxy, tested on 2000 images",
        f"seconds: best of {args.repeats} runs in each process; 'reference' = the worker alone, 'ours' = beside "
        "the other load (the slower of the two workers for second-worker); ratio < 1 is the slow-down",
        "two_workers_worth_cores = 2 / (1 + slow_down): what two one-thread workers can give over one",
    ]
    settings = {"arch": args.arch, "seeds": args.seeds, "epochs": args.epochs, "repeats": args.repeats}
    # A run with other settings gets its own record instead of replacing the default one.
    default = (args.arch, args.seeds, args.epochs) == ("ConvNet-D3-W8-AR-IN-AP", 5, 100)
    suffix = "" if default else f"-{args.arch}-s{args.seeds}-e{args.epochs}"
    path = write_record("cpu_contention", info, comparisons, settings, notes, suffix=suffix)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
