"""Seconds and failures of every zero-cost ranker over a stratified sample of a space.

    python benchmarks/zero_cost_sweep.py --space convnet720 --sample 24 --batch 64

Prints one line per ranker (mean, max and total seconds, candidates with no score) and the
slowest single score. Scores come from ``nas_proxy.zero_cost.score_space``.
"""

from __future__ import annotations

import collections
import math
import time

import torch

from nas_proxy.cli import OneLineParser
from nas_proxy.data import load_dataset
from nas_proxy.space import load_space
from nas_proxy.zero_cost import RankerScore, list_rankers, ranker_batch, score_space


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="convnet720")
    parser.add_argument("--sample", type=int, default=24)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dataset", default="fashionmnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    train, _ = load_dataset(args.dataset)
    images, labels = ranker_batch(train, size=args.batch, seed=args.seed)
    specs = load_space(args.space).sample(args.sample, seed=args.seed)
    start = time.perf_counter()
    results = score_space("all", specs, (images, labels), train.num_classes, seed=args.seed, progress=False)
    wall = time.perf_counter() - start

    by_ranker: dict[str, list[RankerScore]] = collections.defaultdict(list)
    for r in results:
        by_ranker[r.ranker].append(r)
    print(f"{'ranker':10s} {'mean_s':>8s} {'max_s':>8s} {'total_s':>8s} {'no score':>8s}")
    for name in list_rankers():
        rows = by_ranker[name]
        secs = [r.seconds for r in rows]
        missing = [r for r in rows if r.status != "ok" or not math.isfinite(r.score)]
        print(f"{name:10s} {sum(secs) / len(secs):8.3f} {max(secs):8.3f} {sum(secs):8.2f} {len(missing):8d}")
        for r in missing:
            print(f"    {r.arch_id} {r.status} {r.reason}")
    slowest = max(results, key=lambda r: r.seconds)
    print(f"wall {wall:.1f} s for {len(results)} scores over {len(specs)} candidates of {args.space}")
    print(f"slowest single score: {slowest.ranker} on {slowest.arch_id}, {slowest.seconds:.2f} s")


if __name__ == "__main__":
    main()
