"""Train every candidate on every training source, one stored row per run, resumable and parallel.

A *training source* is a named Split plus the TrainConfig to train on it: a proxy set, the
whole training set (``"full"``, the ground truth), or early stopping (the whole set for as many
SGD steps as a proxy run takes). The evaluator does not care which: it runs every
``(candidate, source, seed)`` not yet in the results store and appends each row as it finishes.

How runs execute (which train together as one stacked network, the micro-batch budget) is the
execution plan's decision (:func:`nas_proxy.plan.plan_runs`); this module sends the plan's tasks
to the backend and stores their rows. Parallelism: ``n_jobs > 1`` runs tasks on joblib's loky
process pool with one torch thread per worker; the data goes to each worker once (a
memory-mapped file per Split, cached in the worker), not once per task. ``backend="dask"`` runs
the same tasks on a Dask cluster (:mod:`nas_proxy.cluster`: an address, a ``distributed.Client``,
or a LocalCluster started here), checked before anything is written, with the Splits sent to every worker once and
released at the end, each worker training on its own device, and a lost worker's tasks run
again elsewhere.
"""

from __future__ import annotations

import functools
import math
import platform
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import torch
from joblib import Parallel, delayed

from nas_proxy import zero_cost
from nas_proxy.cluster import DEFAULT_TIMEOUT, ClusterError, DaskSession, connect
from nas_proxy.data import DATASETS, Split, check_pair, load_dataset
from nas_proxy.device import on_cpu, resolve_device
from nas_proxy.errors import NasProxyError
from nas_proxy.groundtruth import load_ground_truth
from nas_proxy.log import progress_bar
from nas_proxy.microbatch import keep_freed_memory
from nas_proxy.plan import DataShape, ExecutionPlan, ExecutionSettings, Run, Trainer, plan_runs, train_task
from nas_proxy.protocol import Invocation, RunProtocol, SourceRecord, StoredConfig
from nas_proxy.proxies import load_proxy
from nas_proxy.proxies.artifact import check_dataset
from nas_proxy.sources import (
    FULL_ID,
    TrainingSource,
    early_stopping_sources,
    full_source,
    proxy_source,
)
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.stacked import FastOptions
from nas_proxy.store import ResultsStore, RunRow, ScoreRow, now_iso
from nas_proxy.train import RunOutcome, TrainConfig, parse_curve, train_and_evaluate
from nas_proxy.zero_cost import parse_rankers

# ----------------------------------------------------------------------------- worker side


# A Split written to a file once per run; workers load it once and keep it (memory-mapped, so
# every worker on a machine shares the same pages).
@dataclass(frozen=True)
class _SplitFile:
    path: str


_WORKER_CACHE: dict[tuple[str, str], Split] = {}
_WORKER_CACHE_SIZE = 4


def _save_split(split: Split, path: Path) -> _SplitFile:
    torch.save(
        {
            "images": split.images.detach().cpu().contiguous(),
            "labels": split.labels.cpu().contiguous(),
            "num_classes": split.num_classes,
            "dataset": split.dataset,
            "mean": list(split.mean),
            "std": list(split.std),
        },
        path,
    )
    return _SplitFile(str(path))


# Device copies of Splits a Dask worker received, one per (Split, device) while the Split lives:
# the training set reaches a GPU worker once, not once per task.
_DEVICE_COPIES: dict[tuple[int, str], Split] = {}


def _materialize(data: Split | _SplitFile, device: str, keep: bool = False) -> Split:
    if isinstance(data, Split):
        if data.device == torch.device(device):
            return data
        if not keep:
            return data.to(device)
        ref = (id(data), device)
        copy = _DEVICE_COPIES.get(ref)
        if copy is None:
            copy = _DEVICE_COPIES[ref] = data.to(device)
            # Freed with the Split (when Dask releases the shared data), never kept beyond it.
            weakref.finalize(data, _DEVICE_COPIES.pop, ref, None)
        return copy
    key = (data.path, device)
    hit = _WORKER_CACHE.get(key)
    if hit is None:
        blob = torch.load(data.path, mmap=True, weights_only=True)
        hit = Split(
            blob["images"],
            blob["labels"],
            int(blob["num_classes"]),
            str(blob["dataset"]),
            tuple(blob["mean"]),
            tuple(blob["std"]),
        ).to(device)
        while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = hit
    return hit


@dataclass(frozen=True)
class _Job:
    arch_id: str
    source_id: str
    seed: int
    config: TrainConfig
    dataset: str

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.arch_id, self.source_id, self.seed, self.config.hash)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _row(job: _Job, out: RunOutcome | BaseException, started: str) -> RunRow:
    """The stored row of one run: its outcome, or the exception that ended it ('failed')."""
    if isinstance(out, BaseException):
        status, acc, seconds, steps, params, error = "failed", math.nan, 0.0, 0, 0, _one_line(out)
    else:
        status, acc = out.status, float(out.accuracy)
        if status == "ok" and not math.isfinite(acc):
            status = "diverged"
        seconds, steps, params = float(out.seconds), int(out.steps), int(out.params)
        error = "" if status == "ok" else "non-finite training loss"
    return RunRow(
        job.arch_id,
        job.source_id,
        job.seed,
        job.config.hash,
        status,
        acc if status == "ok" else math.nan,
        seconds,
        steps,
        params,
        error,
        job.dataset,
        started,
        now_iso(),
        () if isinstance(out, BaseException) else out.curve,
    )


def _run_group(
    group: Sequence[_Job],
    train: Split | _SplitFile,
    test: Split | _SplitFile,
    device: str | None,
    threads: int | None,
    trainer: Trainer,
    options: FastOptions | None = None,
    micro_batch_bytes: int | None = None,
) -> list[RunRow]:
    """The rows of one task of the plan (:func:`nas_proxy.plan.train_task`); a run's exception
    becomes its 'failed' row so the sweep goes on. ``device`` None: this process's own (a Dask
    worker's, :func:`nas_proxy.device.resolve_device`)."""
    device = str(resolve_device(device)) if device is None else device
    if threads is not None:  # a worker process of ours
        torch.set_num_threads(threads)
        keep_freed_memory()  # fast larger micro-batches: the plan gave its workers their budget
    # A worker process keeps a device copy of what it received for its next tasks (Dask's Splits).
    tr, te = _materialize(train, device, threads is not None), _materialize(test, device, threads is not None)
    started = now_iso()
    runs = [(j.arch_id, j.seed) for j in group]
    outs = train_task(
        runs, tr, te, group[0].config, options=options, micro_batch_bytes=micro_batch_bytes, trainer=trainer
    )
    return [_row(job, out, started) for job, out in zip(group, outs, strict=True)]


def protocol_of(sources: Sequence[TrainingSource], test: Split) -> RunProtocol:
    """The settings that give a store's rows their meaning; a rerun must agree with them."""
    # Here, not at the top: the package sets __version__ after importing its modules.
    from nas_proxy import __version__

    configs: dict[str, StoredConfig] = {}
    trained: dict[str, str] = {}  # kind -> hash of its training without the curve
    # Early stopping is the whole-data training cut short (and records no curve of its own).
    for s in sorted(sources, key=lambda s: s.kind == "early"):
        base = replace(s.config, max_steps=None) if s.kind == "early" else s.config
        kind = "full" if s.kind == "early" else s.kind
        same = base.without_curve().hash
        if kind in trained and trained[kind] != same:
            raise NasProxyError(f"all {kind} sources must share one training config; {s.id} differs")
        if kind in configs and s.kind != "early" and configs[kind].hash != base.hash:
            raise NasProxyError(f"all {kind} sources must record one learning curve; {s.id} differs")
        trained[kind] = same
        configs.setdefault(kind, StoredConfig.of(base))
    return RunProtocol(
        dataset=test.dataset,
        num_classes=test.num_classes,
        in_channels=test.in_channels,
        image_size=test.image_size,
        test_images=len(test),
        configs=configs,
        package_version=__version__,
        sources={s.id: SourceRecord.from_json(s.describe()) for s in sources},
    )


def _validate(
    specs: Sequence[ArchSpec | str],
    sources: Sequence[TrainingSource],
    test: Split,
    seeds: Sequence[int],
) -> list[str]:
    if not specs:
        raise NasProxyError("no candidate architectures to evaluate")
    ids = [s if isinstance(s, str) else s.id for s in specs]
    for arch in ids:
        ArchSpec.from_id(arch)  # malformed ids fail here, before anything runs
    if len(set(ids)) != len(ids):
        raise NasProxyError("candidate list repeats an architecture id")
    if not seeds:
        raise NasProxyError("at least one training seed is needed")
    if len(set(seeds)) != len(seeds):
        raise NasProxyError(f"training seeds repeat: {list(seeds)}")
    seen: set[str] = set()
    for s in sources:
        if s.id in seen:
            raise NasProxyError(f"training source {s.id} is given twice")
        seen.add(s.id)
        sp = s.split
        if sp.dataset != test.dataset:
            raise NasProxyError(
                f"training source {s.id} was made from dataset {sp.dataset!r}, but the test set is {test.dataset!r}"
            )
        check_pair(sp, test, f"training source {s.id}")
    return ids


def _merged_protocol(store: ResultsStore, asked: RunProtocol) -> RunProtocol:
    old = store.load_protocol()
    if old is None and store.runs_path.exists() and store.runs_path.stat().st_size > 0:
        raise NasProxyError(f"{store.root} has {store.runs_path.name} but no protocol.json; use another --out")
    if old is None:
        return replace(asked, created=now_iso())
    old.check(asked, str(store.root))
    return old.merge(asked)


def _runs(jobs: Sequence[_Job], sources: Sequence[TrainingSource]) -> list[Run]:
    """The jobs as the plan sees them: runs of one source and config may train together."""
    kinds = {s.id: s.kind for s in sources}
    return [Run(j.arch_id, j.seed, f"{j.source_id}/{j.config.hash}", kinds[j.source_id] == "full") for j in jobs]


def _jobs(ids: Sequence[str], sources: Sequence[TrainingSource], seeds: Sequence[int]) -> list[_Job]:
    # Source-major: each source's runs are contiguous, so its wall time is measured cleanly,
    # and the cheap proxies (listed first) finish before the expensive whole-data runs.
    return [_Job(arch, s.id, seed, s.config, s.split.dataset) for s in sources for arch in ids for seed in seeds]


# ----------------------------------------------------------------------------- parent side


@dataclass(frozen=True)
class EvaluationResult:
    """What one ``evaluate`` call did."""

    out_dir: Path
    planned: int  # (candidate, source, seed) runs asked for
    skipped: int  # already in the store
    trained: int  # new rows this call
    ok: int
    diverged: int
    failed: int
    imported: int = 0  # ground-truth rows copied in
    scores: int = 0  # new training-free scores


def _execute(
    jobs: Sequence[_Job],
    plan: ExecutionPlan,
    sources: Sequence[TrainingSource],
    test: Split,
    *,
    backend: str,
    session: DaskSession | None,
    trainer: Trainer,
) -> Iterator[RunRow]:
    """Yield rows as they finish (any order); each of the plan's tasks is a group of jobs."""
    groups = [[jobs[i] for i in task] for task in plan.tasks]
    how = (plan.options, plan.micro_batch_bytes)  # what every task trains under
    device = plan.device
    by_id = {s.id: s for s in sources}
    used = list(dict.fromkeys(g[0].source_id for g in groups))  # the sources in use (a group shares one)
    if backend == "loky" and plan.workers == 1:
        for group in groups:
            yield from _run_group(group, by_id[group[0].source_id].split, test, device, None, trainer, *how)
        return
    if backend == "loky":
        with tempfile.TemporaryDirectory(prefix="nas-proxy-data-") as tmp:
            # One file per distinct Split: early stopping and the whole data share theirs.
            files: dict[int, _SplitFile] = {}
            for i, sid in enumerate(used):
                split = by_id[sid].split
                if id(split) not in files:
                    files[id(split)] = _save_split(split, Path(tmp) / f"train-{i}.pt")
            refs = {sid: files[id(by_id[sid].split)] for sid in used}
            test_ref = _save_split(test, Path(tmp) / "test.pt")
            parallel = Parallel(n_jobs=plan.workers, backend="loky", return_as="generator_unordered")
            for rows in parallel(
                delayed(_run_group)(g, refs[g[0].source_id], test_ref, device, 1, trainer, *how) for g in groups
            ):
                yield from rows
        return
    assert session is not None, "backend dask runs on a session from nas_proxy.cluster.connect"
    # CPU copies go out once to every worker (one per distinct Split: early stopping and the whole
    # data share theirs); each worker moves them to its own device once.
    cpu: dict[int, Split] = {}
    for s in [by_id[sid].split for sid in used] + [test]:
        if id(s) not in cpu:
            cpu[id(s)] = s if on_cpu(s.device) else s.to("cpu")
    with session.share([cpu[id(by_id[sid].split)] for sid in used] + [cpu[id(test)]]) as shared:
        by_source = dict(zip(used, shared, strict=False))
        tasks = [(g, by_source[g[0].source_id], shared[-1], session.device, 1, trainer, *how) for g in groups]

        def failed(i: int, exc: BaseException) -> list[RunRow]:
            # A task that killed its workers (out of memory?) marks its own runs; the sweep goes on.
            started = now_iso()
            return [_row(job, exc, started) for job in groups[i]]

        for rows in session.map_unordered(_run_group, tasks, on_error=failed):
            yield from rows


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_writer(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """``func`` holding the lock of its ``out_dir`` (:meth:`ResultsStore.lock`), from reading the
    store's protocol to writing its last row: a second writer on the directory is refused."""

    @functools.wraps(func)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with ResultsStore(cast("str | Path", kwargs["out_dir"])).lock():
            return func(*args, **kwargs)

    return locked


@_one_writer
def evaluate(
    specs: Sequence[ArchSpec | str],
    sources: Sequence[TrainingSource],
    test: Split,
    *,
    out_dir: str | Path,
    seeds: Sequence[int] = (0,),
    n_jobs: int = 1,
    backend: str = "loky",
    scheduler: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    trainer: Trainer = train_and_evaluate,
    ground_truth: Any = None,
    rankers: Sequence[str] = (),
    ranker_train: Split | None = None,
    space: str | None = None,
    on_result: Callable[[RunRow], None] | None = None,
    batch_seeds: bool | None = None,
    batch_candidates: bool | None = None,
    fast_options: FastOptions | None = None,
    truth_fidelity: int | None = None,
    cluster_timeout: float = DEFAULT_TIMEOUT,
    execution: ExecutionSettings | None = None,
) -> EvaluationResult:
    """Train each candidate on each source with each seed, skipping runs already stored in ``out_dir``.

    Everything is validated before the store is touched: a bad source, a store made under
    another protocol or an impossible option raises :class:`NasProxyError` and changes nothing.
    The call holds ``out_dir``'s lock: a second writer there gets :class:`nas_proxy.errors.InUseError`.
    Rows are appended (and fsynced) as runs finish, so an interrupted call loses nothing that
    finished and a rerun trains only what is missing. ``ground_truth`` (a
    :class:`nas_proxy.groundtruth.GroundTruth`) supplies the whole-data rows instead of training
    them. ``rankers`` (names from :mod:`nas_proxy.zero_cost`) score every candidate without
    training, on a batch of ``ranker_train``. ``on_result`` sees every stored row (tests use it
    to interrupt a run). ``truth_fidelity``: the whole-data epoch the report judges against by
    default (read off the learning curves).

    How the runs execute: ``execution`` (:class:`nas_proxy.plan.ExecutionSettings`), or the same
    settings as keywords (``n_jobs``, ``backend``, ``scheduler``, ``device``, ``batch_seeds``,
    ``batch_candidates``, ``fast_options``, ``cluster_timeout``), not both. The plan
    (:func:`nas_proxy.plan.plan_runs`) decides from them which runs train together: ``batch_seeds``
    stacks the seeds of a candidate, ``batch_candidates`` candidates of equal depth, width and
    pooling with all their seeds (proxies and early stopping; whole-data runs stay one by one);
    None lets the plan choose. The rows of a group are stored when the group finishes.
    ``fast_options``: speed switches of those stacked runs (recorded in the store's invocation).
    ``trainer``: how a run that trains alone trains (default the reference loop).

    ``backend="dask"``: ``scheduler`` is an address, a ``distributed.Client`` or None (a
    LocalCluster of ``n_jobs`` processes); the cluster is connected and checked
    (:func:`nas_proxy.cluster.connect`: answers within ``cluster_timeout`` seconds, every worker
    runs this nas-proxy and can use the device) before the store is touched. ``device`` None lets
    each worker use its own (``NAS_PROXY_DEVICE`` there, else CUDA when present); a device pins
    all of them. Losing every worker raises :class:`nas_proxy.cluster.ClusterError` after storing
    every finished row; rerunning the call resumes.
    """
    keywords = ExecutionSettings(
        n_jobs, backend, scheduler, device, batch_seeds, batch_candidates, fast_options or FastOptions(),
        cluster_timeout,
    )  # fmt: skip
    if execution is not None and keywords != ExecutionSettings():
        raise NasProxyError("give the execution settings as execution= or as keywords, not both")
    settings = execution or keywords
    ids = _validate(specs, sources, test, seeds)
    with _session(settings) as session:
        return _evaluate(
            ids, sources, test, session, out_dir=out_dir, seeds=seeds, settings=settings, progress=progress,
            trainer=trainer, ground_truth=ground_truth, rankers=rankers, ranker_train=ranker_train, space=space,
            on_result=on_result, truth_fidelity=truth_fidelity,
        )


def _session(settings: ExecutionSettings) -> AbstractContextManager[DaskSession | None]:
    """A checked Dask cluster for ``backend="dask"`` (closed when the block ends), else nothing."""
    if settings.backend != "dask":
        return nullcontext()
    device = None if settings.device is None else str(settings.device)
    return connect(settings.scheduler, n_jobs=settings.n_jobs, device=device, timeout=settings.cluster_timeout)


def _evaluate(
    ids: Sequence[str],
    sources: Sequence[TrainingSource],
    test: Split,
    session: DaskSession | None,
    *,
    out_dir: str | Path,
    seeds: Sequence[int],
    settings: ExecutionSettings,
    progress: bool,
    trainer: Trainer,
    ground_truth: Any,
    rankers: Sequence[str],
    ranker_train: Split | None,
    space: str | None,
    on_result: Callable[[RunRow], None] | None,
    truth_fidelity: int | None,
) -> EvaluationResult:
    """:func:`evaluate` once its inputs are valid and its cluster (if any) is checked."""
    # On a Dask cluster each worker resolves its own device: the client's may not even exist there.
    dev = session.device_label if session is not None else str(resolve_device(settings.device))
    store = ResultsStore(out_dir)
    asked = protocol_of(sources, test)
    gt_rows: list[RunRow] = []
    if ground_truth is not None:
        if any(s.kind == "full" for s in sources):
            raise NasProxyError("give either a whole-data source (--full) or a ground-truth file, not both")
        gt_rows = ground_truth.rows_for(ids, dataset=test.dataset, test_images=len(test))
        asked = replace(
            asked, sources={**asked.sources, FULL_ID: ground_truth.source_description()}
        )
    ranker_names = _check_rankers(rankers, ranker_train)
    protocol = _merged_protocol(store, asked)
    if ground_truth is not None:
        old_full = protocol.config("full")
        gt_cfg = StoredConfig.of(ground_truth.config)
        if old_full is not None and old_full.hash != gt_cfg.hash:
            raise NasProxyError(
                f"{store.root} trained whole-data runs under another config than the ground truth "
                f"{ground_truth.path}; use another --out"
            )
        protocol = replace(protocol, configs={**protocol.configs, "full": gt_cfg})

    # ---- from here on the store is written
    invocation = Invocation(
        started=now_iso(),
        space=space,
        candidates=len(ids),
        sources=(*[s.id for s in sources], *([FULL_ID] if ground_truth is not None else [])),
        seeds=tuple(seeds),
        # With a scheduler's cluster the workers are its own: n_jobs sized nothing.
        n_jobs=settings.n_jobs if session is None or session.local else None,
        backend=settings.backend,
        device=dev,
        host=platform.node(),
        torch=torch.__version__,
        fast_options=settings.fast.text,
        cluster=session.describe() if session is not None else None,
    )
    protocol = protocol.with_invocation(invocation)
    if space is not None:
        protocol = replace(protocol, space=space)
    if truth_fidelity is not None:
        protocol = replace(protocol, truth_fidelity=truth_fidelity)
    store.save_protocol(protocol)

    done = store.done_keys()
    imported = [r for r in gt_rows if r.key not in done]
    if imported:
        store.append_many(imported)
        done |= {r.key for r in imported}

    scores = _score_rankers(store, ids, ranker_names, ranker_train, seeds, test, progress) if ranker_names else 0

    jobs = _jobs(ids, sources, seeds)
    pending = [j for j in jobs if j.key not in done]
    counts = {"ok": 0, "diverged": 0, "failed": 0}
    # A bar at a terminal; elsewhere a line a minute, so a batch log shows it is alive.
    with progress_bar(len(pending), "evaluate", "run", enabled=progress) as bar:
        plan = plan_runs(_runs(pending, sources), DataShape.of(test), settings, dev)
        rows = _execute(pending, plan, sources, test, backend=settings.backend, session=session, trainer=trainer)
        try:
            for row in rows:
                store.append(row)
                counts[row.status] += 1
                bar.set_postfix(ok=counts["ok"], diverged=counts["diverged"], failed=counts["failed"], refresh=False)
                bar.update(1)
                if on_result is not None:
                    on_result(row)
        except ClusterError as exc:
            trained = sum(counts.values())
            start = "" if session is None or session.local else exc.restart
            raise ClusterError(
                f"{exc}; finished runs stored in {store.root}: {trained}, missing: {len(pending) - trained}; "
                f"{start}rerun the same command to resume", exc.restart,
            ) from exc
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the pool's remaining tasks when we leave early (Ctrl-C)
    store.save_protocol(protocol.finished(now_iso()))
    return EvaluationResult(
        store.root,
        len(jobs),
        len(jobs) - len(pending),
        len(pending),
        counts["ok"],
        counts["diverged"],
        counts["failed"],
        len(imported),
        scores,
    )


# ----------------------------------------------------------------------------- training-free rankers


def _check_rankers(rankers: Sequence[str], train: Split | None) -> list[str]:
    if not rankers:
        return []
    names = parse_rankers(rankers)
    if train is None:
        raise NasProxyError("rankers need training images for their minibatch (ranker_train)")
    return names


RANKER_BATCH = 64


def _score_rankers(
    store: ResultsStore,
    ids: Sequence[str],
    names: Sequence[str],
    train: Split | None,
    seeds: Sequence[int],
    test: Split,
    progress: bool,
) -> int:
    """Score every candidate with every ranker (one seeded model and batch per seed); stored as they come."""
    assert train is not None
    done = {(r.ranker, r.arch_id, r.seed) for r in store.score_rows()}
    count = 0
    for seed in seeds:
        skip = {(n, a) for (n, a, s) in done if s == seed}
        batch = zero_cost.ranker_batch(train, min(RANKER_BATCH, len(train)), seed=seed)

        def keep(result: Any, seed: int = seed) -> None:
            nonlocal count
            store.append_scores(
                [
                    ScoreRow(
                        result.ranker,
                        result.arch_id,
                        seed,
                        result.status,
                        float(result.score),
                        float(result.seconds),
                        result.reason,
                        test.dataset,
                        now_iso(),
                    )
                ]
            )
            count += 1

        zero_cost.score_space(
            list(names), list(ids), batch, train.num_classes, seed, progress, skip=skip, on_result=keep
        )
    return count


# ----------------------------------------------------------------------------- the CLI's entry point


def run_evaluation(
    *,
    space: str,
    dataset: str,
    proxies: Sequence[str | Path] = (),
    full: bool = False,
    early_stopping: bool = False,
    sample: int | None = None,
    sample_seed: int = 0,
    pattern: str | None = None,
    epochs: int = 100,
    full_epochs: int | None = None,
    curve: str = "",
    full_curve: str = "",
    fidelity: int | None = None,
    seeds: Sequence[int] = (0,),
    out_dir: str | Path,
    rankers: str | Sequence[str] = (),
    ground_truth: str | Path | None = None,
    data_root: str | Path | None = None,
    progress: bool = True,
    execution: ExecutionSettings | None = None,
) -> EvaluationResult:
    """``nas-proxy evaluate``: select candidates, load proxies and data, check everything, then evaluate.

    Every check runs before training starts and before the store is written: an unknown space,
    a missing or foreign proxy file, a bad option or a store made under another protocol raise
    :class:`NasProxyError` and leave ``out_dir`` as it was. ``curve`` / ``full_curve``: the
    learning-curve points of proxy / whole-data runs (:func:`nas_proxy.train.parse_curve`, e.g.
    ``"10,25,50,100"`` or ``"every,100s,500s"``). ``fidelity``: judge against whole-data
    accuracy after this many epochs (a recorded curve point; stored for ``report``).
    ``execution``: how the runs execute (workers, backend, device, batching; checked when made).
    With ``backend="dask"`` (see :func:`evaluate`) the data is loaded on the CPU here and each
    worker moves it to its own device.
    """
    # Cheap checks first: names and files, before any data is loaded (the settings checked themselves).
    execution = execution or ExecutionSettings()
    dask = execution.backend == "dask"
    ranker_names = parse_rankers(rankers) if rankers else []
    if not (proxies or full or ground_truth or ranker_names):
        raise NasProxyError("nothing to evaluate: give --proxy PATH, --full, --ground-truth FILE or --rankers")
    if early_stopping and not proxies:
        raise NasProxyError("--early-stopping trains as many steps as a proxy run: give at least one --proxy")
    if full and ground_truth:
        raise NasProxyError("give either --full (train the ground truth) or --ground-truth FILE, not both")
    ResultsStore(out_dir).check_unlocked()  # another writer there: say so before loading anything
    search_space = load_space(space)
    ids = [s.id for s in search_space.select(sample=sample, seed=sample_seed, pattern=pattern)]
    loaded = [(load_proxy(p), Path(p)) for p in proxies]
    wanted = dataset.lower() if dataset.lower() in DATASETS else None
    for proxy, path in loaded:
        if wanted is not None and proxy.manifest.dataset != wanted:
            raise NasProxyError(f"{path} was built from {proxy.manifest.dataset!r}, not --dataset {wanted!r}")
    gt = load_ground_truth(ground_truth) if ground_truth is not None else None
    if gt is not None and wanted is not None and gt.dataset != wanted:
        raise NasProxyError(f"{gt.path} is for dataset {gt.dataset!r}, not --dataset {wanted!r}")
    proxy_points = parse_curve(curve, epochs)
    proxy_cfg = TrainConfig(epochs=epochs, curve=proxy_points[0], curve_steps=proxy_points[1])
    if gt is not None:
        if full_epochs is not None and full_epochs != gt.config.epochs:
            raise NasProxyError(f"--full-epochs {full_epochs} disagrees with {gt.path} ({gt.config.epochs} epochs)")
        if full_curve:
            raise NasProxyError("--full-curve applies to whole-data runs trained here, not to a --ground-truth file")
        full_cfg = gt.config
    else:
        e_full = full_epochs if full_epochs is not None else epochs
        full_points = parse_curve(full_curve, e_full)
        full_cfg = TrainConfig(epochs=e_full, curve=full_points[0], curve_steps=full_points[1])
    if fidelity is not None:
        if gt is not None:
            gt.fidelity_column(fidelity)  # raises listing the file's fidelities
        elif fidelity != full_cfg.epochs and fidelity not in full_cfg.curve:
            raise NasProxyError(
                f"--fidelity {fidelity} is not recorded: whole-data runs record epochs "
                f"{', '.join(map(str, sorted({*full_cfg.curve, full_cfg.epochs})))} (see --full-curve)"
            )

    # On a Dask cluster the workers choose their devices: the client keeps the data on its CPU.
    train, test = load_dataset(dataset, root=data_root, device="cpu" if dask else execution.device)
    sources = [proxy_source(p, proxy_cfg, path=path) for p, path in loaded]
    for proxy, path in loaded:
        check_dataset(proxy, train, str(path))  # by content: the same data through any path
    dev = train.device
    # (A proxy from before content ids, matched by path, trains under the dataset's id now.)
    sources = [replace(s, split=replace(s.split.to(dev), dataset=train.dataset)) for s in sources]
    if early_stopping:
        sources += early_stopping_sources(sources, train, full_cfg)
    if full:
        sources.append(full_source(train, full_cfg))
    return evaluate(
        ids,
        sources,
        test,
        out_dir=out_dir,
        seeds=seeds,
        progress=progress,
        ground_truth=gt,
        rankers=ranker_names,
        ranker_train=train,
        space=search_space.name,
        truth_fidelity=fidelity,
        execution=execution if dask else replace(execution, device=dev),
    )
