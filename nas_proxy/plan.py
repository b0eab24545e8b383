"""How runs execute: the one place that decides (a plan) and the entry points that train under it.

A *run* is one (architecture, seed) trained on one training set under one config. Given the runs,
the data's shape and the hardware, :func:`plan_runs` returns a frozen :class:`ExecutionPlan`:
which runs train together as one stacked network (:mod:`nas_proxy.stacked`: the seeds of a
candidate, or candidates of one depth, width and pooling), how many worker processes, the
device, whether the fused CPU kernel serves, and the micro-batch budget. :func:`train_runs` trains
a plan's runs in this process, :func:`train_task` one task of it (what an evaluator's worker
runs). A stacked task that fails is retried one run at a time, and the log says so and why.

Every caller asks here: the evaluator (``nas-proxy evaluate``, the ground truth), ``eval-proxy``
(:func:`nas_proxy.proxies.scoring.evaluate_proxy`), ``refit`` and the Optuna objective
(:func:`train_model_fast`). What the user chose (workers, backend, device, batching, the stacked
path's switches) is one :class:`ExecutionSettings` value, checked when it is made.

The seeds of one candidate have their own, finer plan (:class:`Plan`, :func:`choose_plan`): a
cost model fitted to measurements that picks, per candidate, the plain loop, a stacked network or
one-thread worker processes (:func:`train_many`).

Micro-batches (:mod:`nas_proxy.microbatch`) change float rounding with their size, so their
budget is part of the plan: :data:`~nas_proxy.microbatch.MICRO_BATCH_BYTES` in the caller's
process, :data:`~nas_proxy.microbatch.KEPT_MEMORY_MICRO_BATCH_BYTES` in our worker processes
(which keep their freed memory and so run larger pieces fast). A run's numbers follow from its
plan, never from what its process did before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from joblib import Parallel, delayed

from nas_proxy import kernels, microbatch
from nas_proxy.cluster import DEFAULT_TIMEOUT, parse_address
from nas_proxy.data import Split
from nas_proxy.device import default_group_memory, on_cpu, on_cuda
from nas_proxy.errors import NasProxyError, UnknownNameError, one_line
from nas_proxy.microbatch import KEPT_MEMORY_MICRO_BATCH_BYTES, keep_freed_memory
from nas_proxy.models import ConvNet, count_flops
from nas_proxy.space import ArchSpec
from nas_proxy.stacked import FastOptions, StackedConvNets, group_key, step_memory, train_group, train_stacked
from nas_proxy.train import EpochCallback, RunOutcome, TrainConfig, TrainStats, train_and_evaluate, train_model

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("loky", "dask")
STRATEGIES: tuple[str, ...] = ("auto", "loop", "stacked", "parallel")

# (spec or id, train, test, config, seed) -> RunOutcome: how one run trains when it trains alone.
Trainer = Callable[[ArchSpec | str, Split, Split, TrainConfig, int], RunOutcome]


# ----------------------------------------------------------------------------- what the user chose


def cpu_count() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_n_jobs(n_jobs: Any) -> int:
    """``n_jobs`` as a number of worker processes (-1: one per core); anything else raises one line."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or (n_jobs < 1 and n_jobs != -1):
        raise NasProxyError(f"n_jobs must be a positive integer (or -1 for all cores), got {n_jobs!r}")
    return cpu_count() if n_jobs == -1 else n_jobs


@dataclass(frozen=True)
class ExecutionSettings:
    """How the user asked runs to execute; checked once, here, when made.

    ``n_jobs``: worker processes (-1: one per core; with ``backend="dask"`` and no scheduler, the
    size of a local cluster). ``backend``: one of :data:`BACKENDS`. ``scheduler``: a Dask
    scheduler's address or ``distributed.Client`` (``backend="dask"`` only). ``device``: where runs
    train (None: :func:`nas_proxy.device.resolve_device`'s choice; on a Dask cluster each worker's
    own). ``batch_seeds`` / ``batch_candidates``: stack a candidate's seeds / candidates of one
    group (None: the plan decides, see :func:`plan_runs`). ``fast``: the stacked path's switches.
    ``cluster_timeout``: seconds a Dask cluster has to answer.
    """

    n_jobs: int = 1
    backend: str = "loky"
    scheduler: Any = None
    device: str | torch.device | None = None
    batch_seeds: bool | None = None
    batch_candidates: bool | None = None
    fast: FastOptions = field(default_factory=FastOptions)
    cluster_timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check_n_jobs(self.n_jobs)
        if self.backend not in BACKENDS:
            raise NasProxyError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        if self.scheduler and self.backend != "dask":
            raise NasProxyError("scheduler needs backend dask")
        if isinstance(self.scheduler, str) and self.scheduler:
            parse_address(self.scheduler)  # a bad scheme fails here; whether it answers is checked on connecting
        for name in ("batch_seeds", "batch_candidates"):
            if getattr(self, name) not in (None, True, False):
                raise NasProxyError(f"{name} must be True, False or None (auto), got {getattr(self, name)!r}")

    @property
    def workers(self) -> int:
        """Worker processes asked for (``n_jobs`` with -1 resolved to the cores here)."""
        return check_n_jobs(self.n_jobs)


@dataclass(frozen=True)
class DataShape:
    """What a plan needs to know of the data: its images' channels and side, and its classes."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    @classmethod
    def of(cls, split: Split) -> DataShape:
        return cls(split.in_channels, split.image_size, split.num_classes)


# ----------------------------------------------------------------------------- the seeds of one candidate


@dataclass(frozen=True)
class Plan:
    """How :func:`train_many` trains a candidate's seeds: a strategy, models per stacked network,
    worker processes, and the micro-batch budget (None: this process's default).

    ``inner`` is what each ``parallel`` worker runs on its share of the seeds (``loop`` or ``stacked``).
    """

    strategy: str
    stack_size: int = 1
    n_jobs: int = 1
    inner: str = "loop"
    micro_batch_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES or self.strategy == "auto":
            raise UnknownNameError("training strategy", self.strategy, STRATEGIES[1:])
        if self.inner not in ("loop", "stacked"):
            raise UnknownNameError("worker strategy", self.inner, ["loop", "stacked"])
        if self.stack_size < 1 or self.n_jobs < 1:
            raise NasProxyError(f"stack_size and n_jobs must be at least 1, got {self.stack_size}, {self.n_jobs}")


# Models per stacked network on a CPU: the gain was measured up to 10; beyond, the micro-batches of
# a wide stack shrink towards one image and their per-call overhead takes over.
CPU_STACK_MAX = 10
# Forward FLOPs of one image up to which the one-model stacked step beats the reference step on CPU.
STACKED_STEP_MAX_FLOPS = 20_000_000
# Up to here a step is overhead-bound: one-thread workers win even when the seeds split unevenly.
PARALLEL_ALWAYS_MAX_FLOPS = 10_000_000
# Up to here one-thread workers match threads when the seeds split evenly. Above it a quiet
# machine's two intra-op threads scale better (see choose_plan).
PARALLEL_EVEN_MAX_FLOPS = 50_000_000


def choose_plan(spec: ArchSpec, train: Split, config: TrainConfig, n_seeds: int, n_jobs: int) -> Plan:
    """The plan ``strategy="auto"`` uses: a cost model from measurements on the project's 2-core CPU.

    - GPU: every seed in one stacked network (a small net is launch-bound: R models cost about one).
    - CPU, small avg-pooled nets (up to :data:`STACKED_STEP_MAX_FLOPS` an image on ``train``'s
      shape): the stacked code, the seeds of a process in one network (up to :data:`CPU_STACK_MAX`).
      Stacking a few narrow models makes a model's step faster than one model alone, and even one
      model beats the reference step (GEMM pooling replaces PyTorch's slow NCHW pooling kernel);
      with instance or group norm the fused norm-ReLU-pooling kernel takes a further share off.
      LayerNorm nets stack one model per network (their stacked norm is not PyTorch's fused
      kernel); max-pooled and larger nets keep the reference loop (a wash or slower).
    - CPU with ``n_jobs > 1``: seeds go to one-thread worker processes, each with its share, when
      the net is small (a narrow net uses a second intra-op thread badly, and not at all on a busy
      host) or when the seeds split evenly over the workers and the net is not wide (it then
      scales as well as with threads; from the default ConvNet up, threads scale better on a quiet
      host). The measured figures are in results/benchmarks (train_batched, cpu_contention).
    """
    if on_cuda(train.device):
        return Plan("stacked", stack_size=n_seeds)
    flops = count_flops(spec, train.in_channels, train.image_size, train.num_classes)
    inner = "stacked" if spec.pool == "avgpool" and flops <= STACKED_STEP_MAX_FLOPS else "loop"
    jobs = min(n_jobs, n_seeds)
    even = n_seeds % jobs == 0 and flops <= PARALLEL_EVEN_MAX_FLOPS
    parallel = jobs > 1 and (flops <= PARALLEL_ALWAYS_MAX_FLOPS or even)
    per_process = -(-n_seeds // jobs) if parallel else n_seeds  # the seeds one process trains
    stack = min(per_process, CPU_STACK_MAX) if inner == "stacked" and spec.norm != "layernorm" else 1
    if parallel:
        return Plan("parallel", stack_size=stack, n_jobs=jobs, inner=inner)
    return Plan(inner, stack_size=stack)


def stacks_fused(spec: ArchSpec, shape: DataShape) -> bool:
    """Whether stacked seeds of ``spec`` on data of ``shape`` run its norm -> activation -> pooling
    blocks as the fused CPU kernel (:func:`nas_proxy.kernels.norm_act_pool`): small avg-pooled
    nets with instance or group norm and a (leaky) ReLU. There, seeds stacked in the evaluator
    trained clearly faster than one by one (figures in results/benchmarks). Whether the kernel is
    built here is the plan's other half (:attr:`ExecutionPlan.fused`)."""
    return (
        spec.pool == "avgpool"
        and spec.norm in ("instancenorm", "groupnorm")
        and spec.act in ("relu", "leakyrelu")
        and count_flops(spec, shape.in_channels, shape.image_size, shape.num_classes) <= STACKED_STEP_MAX_FLOPS
    )


# ----------------------------------------------------------------------------- the plan of many runs


@dataclass(frozen=True)
class Run:
    """One run to plan. ``pool``: runs of different pools (training set and config) never train
    together. ``whole_data``: a run on the whole training set, hours long: it is grouped with
    other candidates never, and stacked with its seeds only when asked (an interrupt loses a task)."""

    arch_id: str
    seed: int
    pool: str = ""
    whole_data: bool = False


@dataclass(frozen=True)
class ExecutionPlan:
    """How a list of runs executes, decided once by :func:`plan_runs`.

    ``tasks``: the runs (indices into ``runs``) that train together; a task of one run trains
    alone, a task of one candidate's seeds through :func:`train_many`, a task of several
    candidates as one stacked group (:func:`train_candidates`). ``workers``: processes that run
    the tasks (1: this one). ``fused``: the fused CPU kernel serves stacked norm blocks here.
    ``micro_batch_bytes``: the micro-batch budget of every run. ``options``: the stacked path's switches.
    """

    runs: tuple[Run, ...]
    tasks: tuple[tuple[int, ...], ...]
    workers: int
    device: str
    fused: bool
    micro_batch_bytes: int
    options: FastOptions = field(default_factory=FastOptions)

    def describe(self) -> dict[str, Any]:
        """A line's worth for a log or a record: how many tasks of each kind, and the settings."""
        kinds = {"alone": 0, "seeds": 0, "group": 0}
        for task in self.tasks:
            kinds[_kind([self.runs[i] for i in task])] += 1
        return {**kinds, "workers": self.workers, "device": self.device, "fused": self.fused,
                "micro_batch_bytes": self.micro_batch_bytes}  # fmt: skip


def _kind(runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        return "alone"
    return "seeds" if len({r.arch_id for r in runs}) == 1 else "group"


def micro_batch_budget(in_workers: bool) -> int:
    """The micro-batch budget of runs in our worker processes (which keep freed memory) or in the caller's."""
    return KEPT_MEMORY_MICRO_BATCH_BYTES if in_workers else microbatch.MICRO_BATCH_BYTES


def plan_runs(
    runs: Sequence[Run], shape: DataShape, settings: ExecutionSettings, device: torch.device | str
) -> ExecutionPlan:
    """The plan for ``runs`` on data of ``shape`` on ``device`` (a label: ``cuda``, ``cpu``, ``mixed``).

    Stacking (``settings.batch_seeds`` / ``batch_candidates``, None = auto):

    - seeds of a candidate: asked, or on a GPU; auto on a CPU, only the proxy runs (not whole-data)
      of candidates whose stacked blocks fuse (:func:`stacks_fused`) where the kernel is built
      (elsewhere on a CPU stacking barely pays and the worker processes are the fast path);
    - candidates of one :func:`nas_proxy.stacked.group_key`, with all their seeds: asked, or on
      a GPU; never whole-data runs (convnet720 is 48 such groups; on a CPU it measured slower).
    """
    gpu = on_cuda(device)
    seeds = gpu if settings.batch_seeds is None else settings.batch_seeds
    together = gpu if settings.batch_candidates is None else settings.batch_candidates
    fused = not gpu and kernels.available()
    fused_auto = settings.batch_seeds is None and fused
    tasks: dict[tuple[Any, ...], list[int]] = {}
    for i, run in enumerate(runs):
        spec = ArchSpec.from_id(run.arch_id)
        what: Any
        if together and not run.whole_data:
            what = ("group", group_key(spec))
        elif seeds or (fused_auto and not run.whole_data and stacks_fused(spec, shape)):
            what = ("seeds", run.arch_id)
        else:
            what = ("alone", i)
        tasks.setdefault((what, run.pool), []).append(i)
    in_workers = settings.backend == "dask" or settings.workers > 1
    return ExecutionPlan(
        runs=tuple(runs),
        tasks=tuple(tuple(t) for t in tasks.values()),
        workers=settings.workers,
        device=str(device),
        fused=fused,
        micro_batch_bytes=micro_batch_budget(in_workers),
        options=settings.fast,
    )


# ----------------------------------------------------------------------------- training under a plan


def _reference_trainer(trainer: Trainer | None, micro_batch_bytes: int | None) -> Trainer:
    """``trainer``, with the plan's micro-batch budget where it is one of ours (a user's trainer
    keeps its own: its numbers are its business)."""

    def plain(spec: ArchSpec | str, train: Split, test: Split, config: TrainConfig, seed: int) -> RunOutcome:
        return train_and_evaluate(spec, train, test, config, seed, micro_batch_bytes=micro_batch_bytes)

    def fast(spec: ArchSpec | str, train: Split, test: Split, config: TrainConfig, seed: int) -> RunOutcome:
        return train_and_evaluate_fast(spec, train, test, config, seed, micro_batch_bytes=micro_batch_bytes)

    if trainer is None or trainer is train_and_evaluate:
        return plain
    return fast if trainer is train_and_evaluate_fast else trainer


def train_task(
    runs: Sequence[tuple[str, int]],
    train: Split,
    test: Split,
    config: TrainConfig,
    *,
    options: FastOptions | None = None,
    micro_batch_bytes: int | None = None,
    trainer: Trainer | None = None,
) -> list[RunOutcome | Exception]:
    """One task of a plan: ``runs`` ((architecture id, seed) pairs) trained together, in this process.

    One run trains alone through ``trainer`` (default :func:`nas_proxy.train.train_and_evaluate`).
    Several go through the stacked path: one candidate's seeds through :func:`train_many`, several
    candidates through :func:`train_candidates`. If that fails, the log says why and each run is
    retried alone through ``trainer``, so one bad run marks only itself. Each run's outcome, or
    the exception that ended it, in ``runs`` order.
    """
    alone = _reference_trainer(trainer, micro_batch_bytes)
    if len(runs) > 1:
        try:
            if len({a for a, _ in runs}) == 1:
                seeds = [s for _, s in runs]
                outs = train_many(
                    runs[0][0], train, test, config, seeds, n_jobs=1, options=options,
                    micro_batch_bytes=micro_batch_bytes,
                )  # fmt: skip
            else:
                outs = train_candidates(runs, train, test, config, options=options, micro_batch_bytes=micro_batch_bytes)
            return list(outs)
        except Exception as exc:  # retried one by one below: the failing run gets its own reason
            ids = ", ".join(dict.fromkeys(a for a, _ in runs))
            log.warning("stacked training of %d runs (%s) failed (%s); training them one by one",
                        len(runs), ids, one_line(f"{type(exc).__name__}: {exc}"))  # fmt: skip
    results: list[RunOutcome | Exception] = []
    for arch, seed in runs:
        try:
            results.append(alone(arch, train, test, config, seed))
        except Exception as exc:  # one candidate's failure (OOM, a bad shape) must not end the others
            results.append(exc)
    return results


def train_runs(
    plan: ExecutionPlan, train: Split, test: Split, config: TrainConfig, *, trainer: Trainer | None = None
) -> Iterator[tuple[int, RunOutcome | Exception]]:
    """Train every run of ``plan`` in this process, task by task: ``(index into plan.runs, outcome
    or the exception that ended it)`` as each task finishes (the evaluator's workers run
    :func:`train_task` instead, one task each)."""
    for task in plan.tasks:
        runs = [(plan.runs[i].arch_id, plan.runs[i].seed) for i in task]
        outs = train_task(
            runs, train, test, config, options=plan.options, micro_batch_bytes=plan.micro_batch_bytes, trainer=trainer
        )
        yield from zip(task, outs, strict=True)


def train_candidates(
    runs: Sequence[tuple[ArchSpec | str, int]],
    train: Split,
    test: Split,
    config: TrainConfig,
    *,
    max_group: int | None = None,
    group_memory: int | None = None,
    options: FastOptions | None = None,
    micro_batch_bytes: int | None = None,
) -> list[RunOutcome]:
    """``[train_and_evaluate(spec, train, test, config, seed) for spec, seed in runs]``, to float tolerance, stacked.

    Runs whose architectures share :func:`nas_proxy.stacked.group_key` (depth, width, pooling;
    norms and activations may differ) train as one stacked network: candidates of a sweep, seeds,
    or both. A group is split into chunks of at most ``max_group`` models whose step fits
    ``group_memory`` bytes (default :func:`nas_proxy.device.default_group_memory`, by
    :func:`nas_proxy.stacked.step_memory`). This is the GPU path of a whole sweep: convnet720's
    720 candidates are 48 groups of 15, so a step trains 15 small networks for the launches of
    about one. On a CPU stacking several models loses (see :func:`choose_plan`), so the evaluator
    takes this path there only when asked. A model that diverges is reported as such and touches
    no other model of its group. Results come back in ``runs`` order.
    """
    specs = [ArchSpec.from_id(a) if isinstance(a, str) else a for a, _ in runs]
    seeds = [int(s) for _, s in runs]
    if max_group is not None and max_group < 1:
        raise NasProxyError(f"max_group must be at least 1, got {max_group}")
    budget = default_group_memory(train.device) if group_memory is None else group_memory
    batch = min(config.batch_size, len(train))
    groups: dict[tuple[int, int, str], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(group_key(spec), []).append(i)
    outcomes: dict[int, RunOutcome] = {}
    for members in groups.values():
        members.sort(key=lambda i: (specs[i].norm, specs[i].act))  # equal layers side by side: few segments
        per_model = step_memory(specs[members[0]], train.in_channels, train.image_size, batch)
        size = max(1, min(max_group or len(members), budget // max(per_model, 1)))
        for j in range(0, len(members), size):
            chunk = members[j : j + size]
            outs = train_group(
                [specs[i] for i in chunk], [seeds[i] for i in chunk], train, test, config, options, micro_batch_bytes
            )
            outcomes.update(zip(chunk, outs, strict=True))
    return [outcomes[i] for i in range(len(runs))]


def _train_loop(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: Sequence[int], plan: Plan
) -> list[RunOutcome]:
    return [train_and_evaluate(spec, train, test, config, s, micro_batch_bytes=plan.micro_batch_bytes) for s in seeds]


def _train_stacked(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: Sequence[int], plan: Plan,
    options: FastOptions,
) -> list[RunOutcome]:  # fmt: skip
    """Seeds in chunks of ``plan.stack_size``, each chunk one stacked network."""
    outcomes: list[RunOutcome] = []
    for j in range(0, len(seeds), plan.stack_size):
        chunk = seeds[j : j + plan.stack_size]
        outcomes += train_group([spec] * len(chunk), chunk, train, test, config, options, plan.micro_batch_bytes)
    return outcomes


def _worker_task(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: list[int], plan: Plan, options: FastOptions
) -> list[RunOutcome]:
    torch.set_num_threads(1)  # one core per worker: narrow nets use a second thread badly
    keep_freed_memory()  # fast larger micro-batches: the plan gave this worker their budget
    return _run_plan(spec, train, test, config, seeds, plan, options)


def _train_parallel(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: Sequence[int], plan: Plan,
    options: FastOptions,
) -> list[RunOutcome]:  # fmt: skip
    """Seeds dealt round-robin to ``plan.n_jobs`` loky workers of one torch thread each."""
    chunks = [list(seeds[j :: plan.n_jobs]) for j in range(plan.n_jobs) if seeds[j :: plan.n_jobs]]
    inner = Plan(plan.inner, stack_size=plan.stack_size, micro_batch_bytes=micro_batch_budget(in_workers=True))
    # CPU tensors travel to the workers pickled: a 100-image proxy and a 10k test set are a few MB.
    cpu_train, cpu_test = train.to("cpu"), test.to("cpu")
    parts = Parallel(n_jobs=len(chunks), backend="loky")(
        delayed(_worker_task)(spec, cpu_train, cpu_test, config, chunk, inner, options) for chunk in chunks
    )
    by_seed: dict[int, RunOutcome] = {}
    for chunk, outs in zip(chunks, parts, strict=True):
        by_seed.update(zip(chunk, outs, strict=True))
    return [by_seed[s] for s in seeds]


def _run_plan(
    spec: ArchSpec, train: Split, test: Split, config: TrainConfig, seeds: Sequence[int], plan: Plan,
    options: FastOptions,
) -> list[RunOutcome]:  # fmt: skip
    if plan.strategy == "parallel":
        return _train_parallel(spec, train, test, config, seeds, plan, options)
    if plan.strategy == "stacked":
        return _train_stacked(spec, train, test, config, seeds, plan, options)
    return _train_loop(spec, train, test, config, seeds, plan)


def train_many(
    spec: ArchSpec | str,
    train: Split,
    test: Split,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    strategy: str = "auto",
    n_jobs: int = 1,
    stack_size: int | None = None,
    options: FastOptions | None = None,
    micro_batch_bytes: int | None = None,
) -> list[RunOutcome]:
    """``[train_and_evaluate(spec, train, test, config, s) for s in seeds]``, to float tolerance, faster.

    ``strategy``: one of :data:`STRATEGIES` (``auto``: :func:`choose_plan`; ``loop``: exactly that
    list comprehension; ``stacked``: the seeds as one network, :mod:`nas_proxy.stacked`;
    ``parallel``: seeds split over one-thread loky worker processes). ``n_jobs``: worker processes
    for ``parallel`` (``-1``: one per core); ``auto`` uses workers only when ``n_jobs > 1``, so
    inside an evaluator's own worker pass ``n_jobs=1``. ``stack_size``: models per stacked network
    (default: all seeds for ``stacked``; for ``parallel`` and ``auto`` what :func:`choose_plan`
    picks). ``micro_batch_bytes``: the budget of runs in this process (its workers get theirs).
    Results come back in ``seeds`` order; ``seconds`` of a stacked run is its share of the wall time.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_id(spec)
    if strategy not in STRATEGIES:
        raise UnknownNameError("training strategy", strategy, STRATEGIES)
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise NasProxyError(f"seeds must be distinct, got {seeds}")
    jobs = check_n_jobs(n_jobs)
    if not seeds:
        return []
    if strategy == "parallel" and not on_cpu(train.device):
        raise NasProxyError("strategy 'parallel' runs CPU worker processes; on a GPU use 'stacked' or 'auto'")
    if strategy == "auto":
        plan = choose_plan(spec, train, config, len(seeds), jobs)
        if stack_size is not None:
            plan = replace(plan, stack_size=stack_size)
    elif strategy == "parallel":
        workers = max(1, min(cpu_count() if n_jobs == 1 else jobs, len(seeds)))  # 'parallel' asks for workers
        share = choose_plan(spec, train, config, -(-len(seeds) // workers), 1)  # what one worker runs
        inner = "stacked" if stack_size else share.strategy
        plan = Plan("parallel", stack_size or share.stack_size, workers, inner)
    else:
        plan = Plan(strategy, stack_size or len(seeds))
    plan = replace(plan, micro_batch_bytes=micro_batch_bytes)
    return _run_plan(spec, train, test, config, seeds, plan, options or FastOptions())


def train_model_fast(
    model: ConvNet, train: Split, config: TrainConfig, seed: int, *, on_epoch: EpochCallback | None = None
) -> TrainStats:
    """Drop-in for ``train_model`` (same arguments, same result) that takes the stacked step where faster.

    That is where :func:`choose_plan` puts one model in the stacked code: a GPU, or a CPU and an
    avg-pooled net up to :data:`STACKED_STEP_MAX_FLOPS`; on a CPU the result is bit-identical to
    ``train_model``. ``on_epoch(epoch, model)`` sees ``model`` holding the epoch's weights (the
    Optuna objective reports and prunes there). Elsewhere this is ``train_model`` itself.
    """
    plan = choose_plan(model.spec, train, config, n_seeds=1, n_jobs=1)
    if plan.strategy != "stacked":
        return train_model(model, train, config, seed, on_epoch=on_epoch)

    def write_back_then(epoch: int, net: StackedConvNets) -> None:
        net.write_back()
        on_epoch(epoch, model)  # type: ignore[misc]  # only passed along when given

    _, (stats,) = train_stacked([model], train, config, [seed], on_epoch=write_back_then if on_epoch else None)
    return stats


def train_and_evaluate_fast(
    spec: ArchSpec | str,
    train: Split,
    test: Split,
    config: TrainConfig,
    seed: int,
    *,
    micro_batch_bytes: int | None = None,
) -> RunOutcome:
    """Drop-in for ``train_and_evaluate`` (same signature; module-level so loky can pickle it).

    One seed through the ``auto`` plan in this process: e.g. the evaluator's ``trainer=``.
    """
    return train_many(spec, train, test, config, [seed], n_jobs=1, micro_batch_bytes=micro_batch_bytes)[0]


def outcome(result: RunOutcome | Exception) -> RunOutcome:
    """A run's outcome, or its exception raised (for callers that stop at the first failure)."""
    if isinstance(result, Exception):
        raise result
    return result


__all__ = [
    "BACKENDS",
    "CPU_STACK_MAX",
    "STACKED_STEP_MAX_FLOPS",
    "STRATEGIES",
    "DataShape",
    "ExecutionPlan",
    "ExecutionSettings",
    "Plan",
    "Run",
    "Trainer",
    "check_n_jobs",
    "choose_plan",
    "micro_batch_budget",
    "outcome",
    "plan_runs",
    "stacks_fused",
    "train_and_evaluate_fast",
    "train_candidates",
    "train_many",
    "train_model_fast",
    "train_runs",
    "train_task",
]
