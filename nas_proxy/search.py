"""Optuna studies whose objective trains a trial's architecture on a proxy set.

The pieces compose the usual Optuna way::

    objective = make_objective(proxy, test, space=space, epochs=100, seed=0)
    study = create_study(space, sampler="tpe", pruner="median", storage=None, study_name="fm-dc")
    study.optimize(objective, n_trials=50)

- :func:`suggest_arch` asks one categorical per axis, named by the axis (``depth``, ``width``,
  ...), so any sampler works, including :class:`optuna.samplers.GridSampler` over the space.
- The objective reports test accuracy every ``report_every`` epochs (``trial.report``) so the
  pruners work, and records ``arch_id``, ``source_id``, ``params``, ``seconds``, ``steps``,
  ``epochs``, ``seed`` and ``status`` as trial user attributes.
- Storage: :func:`default_storage` is a journal file (safe for several processes on one file
  system); :func:`open_storage` also takes any RDB URL (``sqlite:///x.db``,
  ``postgresql://...``) for workers on several machines. Several workers on one study:
  :mod:`nas_proxy.studies` (heartbeats, per-trial sampler seeds, an exact budget with
  :func:`nas_proxy.studies.run_trials`).

Scores are accuracies in [0, 1]. A run whose loss diverges returns ``nan`` by default, which
Optuna records as a FAIL trial (its user attr ``status`` is ``diverged``); samplers then ignore
it. ``diverged="zero"`` scores it 0.0 instead, which steers samplers away from such
architectures (use it when divergence is common, e.g. sigmoid nets without normalization).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import BaseTrial, FrozenTrial, TrialState

from nas_proxy.data import DATASETS, Split, check_pair, load_dataset
from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.groundtruth import load_ground_truth
from nas_proxy.log import progress_bar
from nas_proxy.models import build_model, count_params
from nas_proxy.plan import DataShape, ExecutionSettings, Run, outcome, plan_runs, train_model_fast, train_runs
from nas_proxy.proxies.artifact import ProxySet, check_dataset, dataset_argument, load_proxy
from nas_proxy.sources import TrainingSource, full_source, proxy_source
from nas_proxy.space import AXES, ArchSpec, SearchSpace, load_space
from nas_proxy.studies import (
    DEFAULT_HEARTBEAT,
    HEARTBEAT_ATTR,
    TrialSeededSampler,
    budget_of,
    configure_heartbeat,
    default_storage,
    default_storage_path,
    open_storage,
    redact,
    resolve_storage,
    run_trials,
    uses_budget,
)
from nas_proxy.train import TrainConfig, accuracy

# Intermediate reports score a fixed subset of the eval split: on a 100-image proxy, scoring all
# 10,000 test images every epoch would cost far more than the training itself.
DEFAULT_REPORT_IMAGES = 1000

Objective = Callable[[BaseTrial], float | tuple[float, float]]
Diverged = Literal["fail", "zero"]

# ----------------------------------------------------------------------------- trial -> architecture


def suggest_arch(trial: BaseTrial, space: SearchSpace) -> ArchSpec:
    """One ``suggest_categorical`` per axis (named by the axis); the id is kept as user attr ``arch_id``."""
    values = {axis: trial.suggest_categorical(axis, list(choices)) for axis, choices in space.axes}
    spec = space.get(ArchSpec(**values))
    trial.set_user_attr("arch_id", spec.id)
    return spec


def trial_arch(trial: FrozenTrial) -> ArchSpec:
    """The architecture of a finished trial (from ``arch_id``, else from its parameters)."""
    arch_id = trial.user_attrs.get("arch_id")
    if isinstance(arch_id, str):
        return ArchSpec.from_id(arch_id)
    return ArchSpec(**{axis: trial.params[axis] for axis in AXES})


# ----------------------------------------------------------------------------- objective


def _as_source(train_source: Split | ProxySet, source_id: str | None, config: TrainConfig) -> TrainingSource:
    if isinstance(train_source, ProxySet):
        source = proxy_source(train_source, config)
        return source if source_id is None else replace(source, id=source_id)
    return full_source(train_source, config, id=source_id or f"{train_source.dataset}-n{len(train_source)}")


def make_objective(
    train_source: Split | ProxySet,
    eval_split: Split,
    *,
    space: SearchSpace,
    epochs: int,
    seed: int,
    config: TrainConfig | None = None,
    report_every: int | None = None,
    report_images: int | None = DEFAULT_REPORT_IMAGES,
    multi_objective: bool = False,
    diverged: Diverged = "fail",
    reuse_duplicates: bool = True,
    source_id: str | None = None,
    device: str | torch.device | None = None,
) -> Objective:
    """An objective for ``study.optimize``: train the trial's architecture on ``train_source``.

    Returns final accuracy on ``eval_split`` (single objective, direction maximize), or
    ``(accuracy, params)`` with ``multi_objective`` (directions maximize, minimize; for NSGA-II).

    - ``epochs`` with the rest of the protocol from ``config`` (default: the reference protocol).
    - Weights and batch order both come from ``seed``, and every trial uses the same seed, so a
      trial's value is a deterministic function of its architecture on CPU.
    - Single objective: every ``report_every`` epochs (default: ten reports a run) the accuracy
      on a fixed ``report_images`` subset of ``eval_split`` is reported, and the trial raises
      :class:`optuna.TrialPruned` when the study's pruner says so. Multi-objective studies
      cannot prune in Optuna, so nothing is reported there.
    - ``reuse_duplicates``: an architecture already COMPLETE in the study is not trained again
      (the objective is deterministic); the trial takes the stored value and records
      ``duplicate_of``. Samplers over a finite grid propose repeats often.
    - ``diverged``: ``"fail"`` returns ``nan`` (Optuna marks the trial FAIL), ``"zero"`` scores 0.
    """
    if epochs < 1:
        raise NasProxyError(f"epochs must be at least 1, got {epochs}")
    if report_every is not None and report_every < 1:
        raise NasProxyError(f"report_every must be at least 1, got {report_every}")
    if diverged not in ("fail", "zero"):
        raise UnknownNameError("diverged policy", diverged, ("fail", "zero"))
    dev = resolve_device(device)
    cfg = replace(config or TrainConfig(), epochs=epochs)
    source = _as_source(train_source, source_id, cfg)
    train, test = source.split.to(dev), eval_split.to(dev)
    check_pair(train, test)
    if len(train) == 0 or len(test) == 0:
        raise NasProxyError("training source and eval split must both hold images")
    every = report_every or max(1, epochs // 10)
    # A fixed subset (seeded by `seed`) so every trial's intermediate values are comparable.
    monitor = test if report_images is None or report_images >= len(test) else test.random_subset(report_images, seed)

    def objective(trial: BaseTrial) -> float | tuple[float, float]:
        spec = suggest_arch(trial, space)
        for key, value in (("source_id", source.id), ("epochs", epochs), ("seed", seed)):
            trial.set_user_attr(key, value)
        if reuse_duplicates:
            twin = _completed_twin(trial, spec.id)
            if twin is not None:
                for key in ("params", "steps", "status"):
                    trial.set_user_attr(key, twin.user_attrs.get(key))
                trial.set_user_attr("seconds", 0.0)
                trial.set_user_attr("duplicate_of", twin.number)
                values = twin.values
                return (values[0], values[1]) if multi_objective else values[0]
        model = build_model(spec, train.in_channels, train.image_size, train.num_classes, seed=seed).to(dev)
        params = count_params(model)
        trial.set_user_attr("params", params)
        start = time.perf_counter()

        def on_epoch(epoch: int, net: torch.nn.Module) -> None:
            if multi_objective or epoch % every or epoch == epochs:
                return  # the last epoch is scored on the whole eval split below
            trial.report(accuracy(net, monitor), epoch)
            if trial.should_prune():
                trial.set_user_attr("status", "pruned")
                trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        # The stacked step where it is faster (bit-identical on a CPU), the plain loop elsewhere.
        stats = train_model_fast(model, train, cfg, seed, on_epoch=on_epoch)
        trial.set_user_attr("steps", stats.steps)
        if stats.diverged:
            trial.set_user_attr("status", "diverged")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
            acc = 0.0 if diverged == "zero" else math.nan
        else:
            acc = accuracy(model, test)
            trial.set_user_attr("status", "ok")
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        return (acc, float(params)) if multi_objective else acc

    return objective


def _completed_twin(trial: BaseTrial, arch_id: str) -> FrozenTrial | None:
    study: optuna.Study | None = getattr(trial, "study", None)  # an optuna.trial.FixedTrial has no study
    if study is None:
        return None
    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.user_attrs.get("arch_id") == arch_id and done.values is not None:
            return done
    return None


# ----------------------------------------------------------------------------- samplers and pruners

SamplerFactory = Callable[..., optuna.samplers.BaseSampler]


def _tpe(space: SearchSpace, seed: int, **kw: Any) -> optuna.samplers.BaseSampler:
    # multivariate: the axes interact (a norm helps one activation and not another).
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, **kw)


def _random(space: SearchSpace, seed: int, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **kw)


def _grid(space: SearchSpace, seed: int, **kw: Any) -> optuna.samplers.BaseSampler:
    # Visits every candidate once (in a seeded order); the study stops itself when the grid is done.
    return optuna.samplers.GridSampler({axis: list(values) for axis, values in space.axes}, seed=seed, **kw)


def _nsga2(space: SearchSpace, seed: int, **kw: Any) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **kw)


SAMPLERS: dict[str, SamplerFactory] = {"tpe": _tpe, "random": _random, "grid": _grid, "nsga2": _nsga2}
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


def list_samplers() -> list[str]:
    return list(SAMPLERS)


def list_pruners() -> list[str]:
    return list(PRUNERS)


def get_sampler(name: str, space: SearchSpace, seed: int, **options: Any) -> optuna.samplers.BaseSampler:
    """A seeded sampler by name (``tpe``, ``random``, ``grid``, ``nsga2``); ``options`` go to its constructor."""
    if name not in SAMPLERS:
        raise UnknownNameError("sampler", name, SAMPLERS)
    try:
        return SAMPLERS[name](space, seed, **options)
    except TypeError as exc:
        raise NasProxyError(f"sampler {name!r}: bad option ({exc})") from exc


def get_pruner(name: str) -> optuna.pruners.BasePruner:
    """A pruner by name (``median``, ``hyperband``, ``none``) with Optuna's defaults."""
    if name not in PRUNERS:
        raise UnknownNameError("pruner", name, PRUNERS)
    return PRUNERS[name]()


# ----------------------------------------------------------------------------- storage and studies


def create_study(
    space: SearchSpace,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    pruner: str | optuna.pruners.BasePruner | None = "median",
    storage: str | Path | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int = 0,
    multi_objective: bool | None = None,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    heartbeat: int | None = None,
) -> optuna.Study:
    """Create or continue (``load_if_exists``) a study over ``space``; any number of processes may share it.

    - ``multi_objective`` (default: ``sampler == "nsga2"``): directions (maximize accuracy,
      minimize params); such studies cannot prune, so ``pruner`` must be ``none``/``None``.
    - ``storage=None`` and no ``study_name``: an in-memory study. ``storage=None`` with a name:
      the journal file ``results/studies/<name>.log``.
    - ``user_attrs`` (e.g. the proxy id and epochs) are written on a new study and checked on a
      continued one, so a study never mixes trials scored under different settings.
    - A sampler given by name samples trial *n* with the seed ``(seed, n)``
      (:class:`nas_proxy.studies.TrialSeededSampler`): several workers with one seed run
      different trials, and a continued study does not propose its first trials again. (The
      grid sampler keeps ``seed``: it skips points other workers run or ran by itself.)
    - ``heartbeat``: seconds between a running trial's heartbeats on a stored study (its trial
      is failed and run again when they stop). A new study records its interval (default
      :data:`nas_proxy.studies.DEFAULT_HEARTBEAT`) and every later worker uses it.
    """
    sampler_name = sampler if isinstance(sampler, str) else type(sampler).__name__
    multi = (sampler_name == "nsga2") if multi_objective is None else multi_objective
    if isinstance(sampler, str) and sampler not in SAMPLERS:
        raise UnknownNameError("sampler", sampler, SAMPLERS)
    pruner_obj = get_pruner(pruner) if isinstance(pruner, str) else pruner or optuna.pruners.NopPruner()
    if multi and not isinstance(pruner_obj, optuna.pruners.NopPruner):
        raise NasProxyError("Optuna cannot prune multi-objective studies: use pruner 'none' with nsga2")
    attrs = {"space": space.name, "objective": "accuracy,params" if multi else "accuracy", **(user_attrs or {})}
    if storage is None and study_name is None:
        store: optuna.storages.BaseStorage | None = None
    else:
        name = study_name or "nas-proxy"
        store = open_storage(storage, name)
    directions: list[Literal["minimize", "maximize"]] = ["maximize", "minimize"] if multi else ["maximize"]
    existing = _existing_attrs(store, study_name)
    if existing is not None:
        for key, value in attrs.items():
            if key in existing and existing[key] != value:
                raise NasProxyError(
                    f"study {study_name!r} was run with {key}={existing[key]!r}, not {value!r}; "
                    f"choose another study name"
                )
    beat = _heartbeat(existing, heartbeat, study_name)
    if store is not None:
        configure_heartbeat(store, beat)
    study = optuna.create_study(
        storage=store,
        sampler=None,
        pruner=pruner_obj,
        study_name=study_name,
        directions=directions,
        load_if_exists=True,
    )
    if existing is None:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        # Two workers may create the study at the same moment: the later attrs won. Same settings: fine.
        written = study.user_attrs
        for key, value in attrs.items():
            if written.get(key) != value:
                raise NasProxyError(
                    f"another worker started study {study_name!r} at the same moment with "
                    f"{key}={written.get(key)!r}, not {value!r}; choose another study name"
                )
    if store is not None:
        if HEARTBEAT_ATTR not in (existing or {}):
            study.set_user_attr(HEARTBEAT_ATTR, beat)
        # Of two first workers, the later write won: both use it (or one says it asked otherwise).
        configure_heartbeat(store, _heartbeat(study.user_attrs, heartbeat, study_name))
    if isinstance(sampler, str):
        options = dict(sampler_options or {})
        shared = get_sampler(sampler, space, seed, **options)  # a bad option fails here, not in a trial
        # The grid sampler needs one seed everywhere (it names grid points by their place in a
        # seeded shuffle) and keeps workers apart itself, through the storage.
        study.sampler = shared if sampler in _ONE_SEED else TrialSeededSampler(
            lambda s: get_sampler(sampler, space, s, **options), seed
        )
    else:
        study.sampler = sampler
    return study


_ONE_SEED = frozenset({"grid"})


def _heartbeat(existing: Mapping[str, Any] | None, asked: int | None, study_name: str | None) -> int:
    """The study's heartbeat interval: a worker of an existing study uses the study's, and must not ask another."""
    recorded = (existing or {}).get(HEARTBEAT_ATTR)
    if recorded is not None and asked is not None and asked != recorded:
        raise NasProxyError(
            f"study {study_name!r} sends heartbeats every {recorded} s (every worker of a study must): "
            f"leave out --heartbeat or give {recorded}"
        )
    return int(asked or recorded or DEFAULT_HEARTBEAT)


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _existing_attrs(store: optuna.storages.BaseStorage | None, study_name: str | None) -> dict[str, Any] | None:
    if store is None or study_name is None:
        return None
    try:
        study_id = store.get_study_id_from_name(study_name)
    except KeyError:
        return None
    return dict(store.get_study_user_attrs(study_id))


# ----------------------------------------------------------------------------- results


def counted_trials(study: optuna.Study) -> int:
    """Trials that used up budget: complete, pruned, or failed by divergence (not interrupted ones)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=_FINISHED) if uses_budget(t))


def stop_after(n_trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that stops the study once ``n_trials`` trials count (see :func:`counted_trials`).

    Unlike ``optimize(n_trials=...)`` this is a total over every process and every rerun, so
    a rerun after Ctrl-C finishes the study's budget. With several workers at once it is checked
    after each trial, so trials started meanwhile can exceed it; use
    :func:`nas_proxy.studies.run_trials` for an exact budget.
    """

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if counted_trials(study) >= n_trials:
            study.stop()

    return callback


def best_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """Up to ``k`` complete trials with distinct architectures, best accuracy first.

    Multi-objective studies: the Pareto front first (by accuracy), then the other trials.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    done = [t for t in done if not math.isnan(t.values[0])]
    front: set[int] = set()
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
    done.sort(key=lambda t: (t.number not in front, -t.values[0], t.number))
    out: list[FrozenTrial] = []
    seen: set[str] = set()
    for t in done:
        arch = trial_arch(t).id
        if arch not in seen:
            seen.add(arch)
            out.append(t)
        if len(out) == k:
            break
    return out


@dataclass(frozen=True)
class GroundTruthRanks:
    """Whole-data accuracy per architecture (mean over seeds) and its rank (1 = best).

    ``dataset``: the file's dataset when it has a protocol (None for a bare table).
    """

    accuracy: dict[str, float]
    rank: dict[str, int]
    path: str
    dataset: str | None = None

    def __len__(self) -> int:
        return len(self.accuracy)


def read_ground_truth(path: str | Path) -> GroundTruthRanks:
    """Ranks from a ground-truth file read by :func:`nas_proxy.groundtruth.load_ground_truth`.

    An exported file is checked with its sidecar (hash, columns, statuses, config); a bare CSV
    from elsewhere needs ``arch_id`` and ``accuracy`` (in [0, 1]). Rows whose ``status`` is not
    ok are dropped.
    """
    gt = load_ground_truth(path, bare=True)
    table = gt.table
    if "status" in table.columns:
        table = table[table["status"] == "ok"]
    table = table.dropna(subset=["accuracy"])
    if table.empty:
        raise NasProxyError(f"{path}: no finished runs with an accuracy")
    mean = table.groupby("arch_id")["accuracy"].mean().sort_values(ascending=False, kind="stable")
    ranks = mean.rank(ascending=False, method="min").astype(int)
    return GroundTruthRanks(
        {str(k): float(v) for k, v in mean.items()},
        {str(k): int(v) for k, v in ranks.items()},
        str(gt.path),
        None if gt.bare else gt.dataset,
    )


def find_ground_truth(dataset: str, space: str, root: str | Path = Path("results") / "groundtruth") -> Path | None:
    """The evaluator's ``<dataset>-<space>-e<epochs>.csv`` with the most epochs, if any exists."""
    found: list[tuple[int, Path]] = []
    prefix = f"{Path(dataset).stem}-{space}-e"
    for p in Path(root).glob(f"{prefix}*.csv"):
        tail = p.stem[len(prefix) :]
        if tail.isdigit():
            found.append((int(tail), p))
    return max(found)[1] if found else None


@dataclass(frozen=True)
class Refit:
    """Whole-data result of one architecture."""

    arch_id: str
    accuracy: float
    seconds: float
    status: str


def refit(
    specs: Sequence[ArchSpec],
    train: Split,
    test: Split,
    config: TrainConfig,
    seed: int,
    *,
    progress: bool = False,
    on_result: Callable[[Refit], None] | None = None,
) -> list[Refit]:
    """Train each architecture on ``train`` (e.g. the whole training set) and score it on ``test``.

    The runs train as the execution plan says for whole-data runs (:func:`nas_proxy.plan.plan_runs`).
    """
    runs = [Run(spec.id, seed, whole_data=True) for spec in specs]
    plan = plan_runs(runs, DataShape.of(test), ExecutionSettings(), train.device)
    out: list[Refit] = []
    with progress_bar(len(specs), "refit", "arch", enabled=progress) as bar:
        for i, result in train_runs(plan, train, test, config):
            o = outcome(result)
            r = Refit(specs[i].id, o.accuracy, o.seconds, o.status)
            out.append(r)
            bar.update(1)
            if on_result is not None:
                on_result(r)
    return out


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ...), non-zero only."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_table(
    trials: Sequence[FrozenTrial],
    *,
    ground_truth: GroundTruthRanks | None = None,
    refits: Sequence[Refit] = (),
) -> str:
    """A markdown table of ``trials`` (accuracies in %), with ground-truth and refit columns when given."""
    refit_by = {r.arch_id: r for r in refits}
    head = ["#", "trial", "arch_id", "proxy acc %", "params"]
    if refits:
        head.append("whole-data acc % (refit)")
    if ground_truth is not None:
        head += ["ground-truth acc %", f"rank of {len(ground_truth)}"]
    rows = [head, ["---"] * len(head)]
    for i, t in enumerate(trials, 1):
        arch = trial_arch(t).id
        row = [str(i), str(t.number), arch, f"{100 * t.values[0]:.2f}", f"{t.user_attrs.get('params', '')}"]
        if refits:
            r = refit_by.get(arch)
            row.append("" if r is None else (f"{100 * r.accuracy:.2f}" if r.status == "ok" else r.status))
        if ground_truth is not None:
            acc = ground_truth.accuracy.get(arch)
            row += ["-", "-"] if acc is None else [f"{100 * acc:.2f}", str(ground_truth.rank[arch])]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


# ----------------------------------------------------------------------------- the CLI's entry point


@dataclass(frozen=True)
class SearchStart:
    """A search about to run its trials: what a caller shows before they start."""

    study: optuna.Study
    name: str
    storage: str  # as shown: an RDB URL without its password, or the journal path
    space: SearchSpace
    proxy: ProxySet
    sampler: str
    pruner: str
    n_trials: int
    done: int  # trials that counted before this call
    test: Split


@dataclass(frozen=True)
class SearchResult:
    """What :func:`run_search` did: the study, its best trials and how they fare on the whole data."""

    start: SearchStart
    counts: dict[str, int]
    budget: str
    top: list[FrozenTrial]
    ground_truth: GroundTruthRanks | None = None
    refits: list[Refit] = field(default_factory=list)
    refit_images: int = 0
    refit_epochs: int = 0
    interrupted: bool = False  # Ctrl-C: finished trials are stored, the refit was skipped

    def table(self) -> str:
        return best_table(self.top, ground_truth=self.ground_truth, refits=self.refits)


def run_search(
    *,
    space: str,
    proxy: str | Path,
    n_trials: int,
    sampler: str = "tpe",
    pruner: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    n_jobs: int = 1,
    heartbeat: int | None = None,
    dataset: str | None = None,
    epochs: int = 100,
    seed: int = 0,
    test_subset: int | None = None,
    top: int = 5,
    refit_top: int = 0,
    full_epochs: int | None = None,
    refit_subset: int | None = None,
    ground_truth: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    trial_bar: bool = False,
    on_start: Callable[[SearchStart], None] | None = None,
) -> SearchResult:
    """``nas-proxy search``: an Optuna study over ``space`` whose trials train on the proxy file ``proxy``.

    Every check runs before data is loaded or a study is opened. The study is created or
    continued (:func:`create_study`; named ``SPACE-PROXYID-SAMPLER-eEPOCHS-sSEED`` by default, a
    journal file under ``results/studies`` unless ``storage`` names one) and runs until
    ``n_trials`` trials count over every worker and rerun (:func:`nas_proxy.studies.run_trials`).
    ``on_start`` sees the study before its trials run. Ctrl-C ends the trials, not the call: the
    result says ``interrupted``. Then the ``refit_top`` best are trained on the whole training set
    (or ``refit_subset`` images of it) for ``full_epochs``, and ranked against ``ground_truth``
    (default: ``results/groundtruth/DATASET-SPACE-e*.csv`` if one exists; see
    :func:`read_ground_truth`). ``progress``: the refit's bar; ``trial_bar``: Optuna's.
    """
    # Cheap checks first: a typo fails before any data is loaded or any storage is opened.
    for flag, value in (("n_trials", n_trials), ("n_jobs", n_jobs), ("epochs", epochs)):
        if value < 1 and not (flag == "n_jobs" and value == -1):
            raise NasProxyError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if refit_top < 0:
        raise NasProxyError(f"--refit-top must be at least 0, got {refit_top}")
    if heartbeat is not None and heartbeat < 1:
        raise NasProxyError(f"--heartbeat must be at least 1 (seconds), got {heartbeat}")
    multi = sampler == "nsga2"
    pruner = pruner or ("none" if multi else "median")
    get_pruner(pruner)
    search_space = load_space(space)
    proxy_set = load_proxy(proxy)
    built_from = proxy_set.manifest.dataset
    named = dataset is not None and dataset.lower() in DATASETS
    if named and dataset is not None and dataset.lower() != built_from:  # own data is compared by content once loaded
        raise NasProxyError(f"proxy from another dataset: {proxy} was built from {built_from!r}, not {dataset!r}")
    gt_path = ground_truth or find_ground_truth(built_from, search_space.name)
    gt = read_ground_truth(gt_path) if gt_path is not None else None
    if gt is not None and gt.dataset is not None and gt.dataset != built_from:
        raise NasProxyError(f"{gt.path} is for dataset {gt.dataset!r}, but {proxy} was built from {built_from!r}")
    config = TrainConfig(epochs=epochs)
    name = study_name or f"{search_space.name}-{proxy_set.id}-{sampler}-e{epochs}-s{seed}"
    # Absolute: a worker started in another directory must name the same study to join it.
    where = resolve_storage(storage, name)
    attrs = {"source_id": proxy_set.id, "dataset": built_from, "epochs": epochs, "seed": seed,
             "config_hash": config.hash, "test_subset": test_subset or 0}
    options = {"population_size": max(4, min(50, n_trials // 5))} if multi else {}
    study = create_study(search_space, sampler, pruner, where, name, seed, multi,
                         user_attrs=attrs, sampler_options=options, heartbeat=heartbeat)
    train, test = load_dataset(dataset or dataset_argument(proxy_set.manifest), root=data_root, device=device)
    check_dataset(proxy_set, train, str(proxy))
    if test_subset is not None:
        test = test.random_subset(test_subset, seed=0)  # fixed subset: comparable across studies
    objective = make_objective(proxy_set, test, space=search_space, epochs=epochs, seed=seed, config=config,
                               multi_objective=multi, device=device)
    start = SearchStart(study, name, redact(where) if "://" in where else where, search_space, proxy_set,
                        sampler, pruner, n_trials, counted_trials(study), test)
    if on_start is not None:
        on_start(start)
    interrupted = False
    try:
        run_trials(study, objective, n_trials, n_jobs=n_jobs, show_progress_bar=trial_bar)
    except KeyboardInterrupt:
        interrupted = True  # the running trial is marked FAIL by Optuna; finished ones are stored
    best = best_trials(study, max(top, refit_top))
    result = SearchResult(start, study_counts(study), budget_of(study, n_trials).text(), best, gt,
                          interrupted=interrupted)
    if not best or not refit_top or interrupted:
        return result
    full = train if refit_subset is None else train.random_subset(refit_subset, seed=seed)
    full_config = TrainConfig(epochs=full_epochs or epochs)
    specs = [trial_arch(t) for t in best[:refit_top]]
    refits = refit(specs, full, test, full_config, seed, progress=progress)
    return replace(result, refits=refits, refit_images=len(full), refit_epochs=full_config.epochs)


__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Diverged",
    "GroundTruthRanks",
    "Refit",
    "SearchResult",
    "SearchStart",
    "best_table",
    "best_trials",
    "counted_trials",
    "create_study",
    "default_storage",
    "default_storage_path",
    "find_ground_truth",
    "get_pruner",
    "get_sampler",
    "list_pruners",
    "list_samplers",
    "make_objective",
    "open_storage",
    "read_ground_truth",
    "refit",
    "run_search",
    "stop_after",
    "study_counts",
    "suggest_arch",
    "trial_arch",
]
