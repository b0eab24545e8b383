"""Score a proxy set the way the paper's accuracy tables do: train fresh nets on it, test on real data.

REFERENCE.md section 4: a fresh ConvNet per seed, SGD lr 0.01, momentum 0.9, weight decay 5e-4,
batch 256, 300 epochs, lr x0.1 once at half (``TrainConfig()``); the final test accuracy, mean
and standard deviation over the nets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nas_proxy.data import Split, check_pair
from nas_proxy.errors import NasProxyError, check_positive_int
from nas_proxy.log import progress_bar
from nas_proxy.plan import DataShape, ExecutionSettings, Run, outcome, plan_runs, train_runs
from nas_proxy.proxies.artifact import ProxySet
from nas_proxy.space import DEFAULT_ARCH, ArchSpec
from nas_proxy.train import RunOutcome, TrainConfig

ModelCallback = Callable[[int, RunOutcome], None]


def evaluate_proxy(
    proxy: ProxySet,
    test: Split,
    arch: str | ArchSpec = DEFAULT_ARCH,
    models: int = 5,
    config: TrainConfig | None = None,
    seed: int = 0,
    *,
    progress: bool = False,
    on_model: ModelCallback | None = None,
) -> list[float]:
    """Test accuracies in [0, 1] of ``models`` nets (seeds ``seed .. seed+models-1``) trained on ``proxy``.

    A net whose loss diverges scores NaN (reported, not hidden). ``on_model(i, outcome)`` is
    called after each net (several at once where the plan stacks them), so a caller can print
    results as they come. The nets train as the execution plan says (:func:`nas_proxy.plan.plan_runs`:
    on a CPU one by one, or stacked where their blocks fuse; on a GPU stacked).
    """
    check_positive_int(models, "models")
    spec = ArchSpec.from_id(arch) if isinstance(arch, str) else arch
    config = config if config is not None else TrainConfig()
    train = proxy.as_split(test.device)
    check_pair(train, test, f"proxy {proxy.id}")

    runs = [Run(spec.id, seed + i) for i in range(models)]
    plan = plan_runs(runs, DataShape.of(test), ExecutionSettings(), test.device)
    accs: list[float] = []
    with progress_bar(models * config.epochs, f"eval {proxy.id}", "epoch", enabled=progress) as bar:
        for i, result in train_runs(plan, train, test, config):
            out = outcome(result)
            accs.append(out.accuracy)
            # Epochs tick by the finished net (a stacked task finishes its nets together).
            bar.set_postfix(model=f"{len(accs)}/{models}", refresh=False)
            bar.n = len(accs) * config.epochs
            bar.refresh()
            if on_model is not None:
                on_model(i, out)
    return accs


def summarize(accuracies: list[float]) -> tuple[float, float]:
    """Mean and standard deviation in percent (``np.std``, ddof 0, as the authors report)."""
    if not accuracies:
        raise NasProxyError("no accuracies to summarize")
    values = np.asarray(accuracies, dtype=np.float64) * 100
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std())
