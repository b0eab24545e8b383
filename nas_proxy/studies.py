"""Optuna studies shared by several worker processes, on one machine or many.

Optuna gives the pieces; this module makes them hold together for ``nas-proxy search``:

- **Storages** (:func:`open_storage`): a journal file (the default; any number of processes on
  one file system) or an RDB URL. Paths are made absolute, so a worker started in another
  directory finds the same study. ``postgresql://user@host/db`` takes whichever PostgreSQL
  driver is installed (``pip install 'nas-proxy[postgres]'`` brings psycopg 3), and a missing
  one is named. Workers that create an RDB's tables at the same moment retry instead of dying
  on the other's ``UniqueViolation``.
- **Heartbeats**: every running trial records a heartbeat (every ``heartbeat`` seconds, 60 by
  default, the same for every worker of a study: its first worker writes it into the study). A
  trial whose heartbeat stops for two intervals (its worker was killed, its machine lost) is
  failed by another worker and enqueued again with the same architecture (Optuna's retry
  callback, up to :data:`MAX_RETRY` times). The journal file has no heartbeat of its own in
  Optuna: :class:`HeartbeatJournalStorage` adds one, judged by each observer's own clock (a
  heartbeat that has not *changed* for the grace period), so machines' clocks need not agree.
- **Seeds** (:class:`TrialSeededSampler`): trial *n* samples with a sampler seeded by
  ``(seed, n)``. Trial numbers are unique in a study, so N workers run N different trials, and
  one worker's study is reproducible however often it is interrupted. (Optuna's own samplers
  share one seed per process: two workers with one seed propose identical pairs.)
- **An exact budget** (:func:`run_trials`): ``n_trials`` is the study's total over all workers
  and reruns. A trial starts only while fewer than ``n_trials`` trials with smaller numbers
  are counted, running or queued; a worker whose last slot another worker took in the same
  instant records that trial as FAIL with ``status`` ``over-budget`` (never trained). At the
  end a worker waits for trials running elsewhere, so a dead worker's trial is re-run here.

Counted trials (the budget): COMPLETE, PRUNED, and FAIL of a diverged run (see
:func:`uses_budget`); a trial failed by an exception, an interrupt, a stale heartbeat or the
budget does not count.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import math
import os
import platform
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the extension point RDBStorage implements
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nas_proxy.errors import NasProxyError

# SQLAlchemy (an Optuna requirement) is imported inside the functions for RDB URLs: a study on a
# journal file, the default, never needs it, and its import would add a fraction of a second to the
# start of every search worker.

DEFAULT_STUDY_DIR = Path("results") / "studies"
DEFAULT_HEARTBEAT = 60  # seconds between a running trial's heartbeats
GRACE_BEATS = 2  # a trial is stale after this many intervals without one (Optuna's RDB default)
MAX_RETRY = 3  # times a stale trial is enqueued again
HEARTBEAT_KEY = "nas_proxy:heartbeat"  # trial system attr of the journal's heartbeats
HEARTBEAT_ATTR = "heartbeat"  # study user attr: the interval every worker of the study uses
OVER_BUDGET = "over-budget"  # trial user attr ``status`` of a trial started past the budget
RDB_ATTEMPTS = 6  # tries to open an RDB whose tables another process creates at the same time

_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- storages


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage whose running trials send heartbeats, so a killed worker's trial is failed.

    A heartbeat is a trial system attr (``nas_proxy:heartbeat``) rewritten every interval. A
    trial is stale when an observer has seen the same heartbeat for longer than the grace period
    by its own monotonic clock: no two machines' clocks are compared. A trial without heartbeats
    (from a worker that sends none) is never judged stale.
    """

    def __init__(
        self,
        backend: Any,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (heartbeat, when first seen)

    def record_heartbeat(self, trial_id: int) -> None:
        # Finished meanwhile (or failed by another worker): nothing is left to keep alive.
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, round(time.time(), 3))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or GRACE_BEATS * self.heartbeat_interval
        now = time.monotonic()
        stale, running = [], set()
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            running.add(t._trial_id)
            if HEARTBEAT_KEY not in t.system_attrs:
                continue
            beat = t.system_attrs[HEARTBEAT_KEY]
            seen = self._seen.get(t._trial_id)
            if seen is None or seen[0] != beat:
                self._seen[t._trial_id] = (beat, now)
            elif now - seen[1] > grace:
                stale.append(t._trial_id)
        for trial_id in set(self._seen) - running:
            del self._seen[trial_id]
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback  # its name before Optuna 4.9


def retry_callback() -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that enqueues a stale trial again (same parameters), up to :data:`MAX_RETRY` times."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=MAX_RETRY)  # type: ignore[no-any-return]


def configure_heartbeat(storage: BaseStorage, seconds: int | None) -> None:
    """Heartbeats every ``seconds`` (None: none) with the retry callback, on a journal or RDB storage.

    RDBStorage reads these attributes at every use, so setting them on an open storage works
    (a study's interval is only known once its storage is open).
    """
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1):
        raise NasProxyError(f"heartbeat must be a whole number of seconds >= 1, got {seconds!r}")
    callback = retry_callback() if seconds is not None else None
    grace = None if seconds is None else GRACE_BEATS * seconds
    if isinstance(storage, HeartbeatJournalStorage):
        storage.heartbeat_interval, storage.grace_period, storage.stale_trial_callback = seconds, grace, callback
    elif isinstance(storage, RDBStorage):
        storage.heartbeat_interval, storage.grace_period = seconds, grace
        storage.heartbeat_stale_trial_callback = callback  # type: ignore[attr-defined]
        storage.failed_trial_callback = callback  # the same, under its name before Optuna 4.9


def heartbeat_of(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval in seconds, None when it sends none."""
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


def default_storage_path(study_name: str) -> Path:
    """``results/studies/<study_name>.log`` under the current directory, as an absolute path."""
    return (DEFAULT_STUDY_DIR / f"{study_name}.log").resolve()


def default_storage(path: str | Path, heartbeat: int | None = DEFAULT_HEARTBEAT) -> HeartbeatJournalStorage:
    """A journal-file storage at ``path`` (appends under a file lock, safe for several processes), with heartbeats."""
    path = Path(path).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = HeartbeatJournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise NasProxyError(f"cannot open study journal {str(path)!r}: {exc.strerror or exc}") from exc
    configure_heartbeat(storage, heartbeat)
    return storage


def redact(url: str) -> str:
    """An RDB URL with its password as ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported as given
        return url


def resolve_storage(storage: str | Path | None, study_name: str) -> str:
    """Where a study lives, as every worker must name it: an absolute journal path, or an RDB URL
    (a relative SQLite path made absolute). ``None``: ``results/studies/<study_name>.log`` here."""
    if storage is None:
        return str(default_storage_path(study_name))
    text = str(storage)
    if "://" not in text:
        return str(Path(text).expanduser().resolve())
    if text.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        url = make_url(text)
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            url = url.set(database=str(Path(url.database).expanduser().resolve()))
            return url.render_as_string(hide_password=False)
    return text


def _driver_url(text: str) -> str:
    """The URL with a driver that is installed; a missing driver is named in one line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise NasProxyError(f"cannot open storage {redact(text)!r}: not a storage URL ({exc})") from exc
    if url.get_backend_name() == "postgresql" and "+" not in url.drivername:
        # No driver in the URL: SQLAlchemy 2.0 means psycopg2, 2.1 psycopg (3); take whichever is here.
        for driver in ("psycopg", "psycopg2"):
            try:
                importlib.import_module(driver)
            except ImportError:
                continue
            return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
        raise NasProxyError(
            f"cannot open storage {redact(text)!r}: no PostgreSQL driver is installed (psycopg or psycopg2); "
            f"pip install 'nas-proxy[postgres]'"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = getattr(exc, "name", None) or str(exc)
        hint = " (pip install 'nas-proxy[postgres]')" if url.get_backend_name() == "postgresql" else ""
        raise NasProxyError(
            f"cannot open storage {redact(text)!r}: its driver {module!r} ({url.drivername}) is not installed{hint}"
        ) from exc
    return text


def rdb_storage(url: str, heartbeat: int | None = DEFAULT_HEARTBEAT) -> RDBStorage:
    """An RDB storage, its tables created if needed, tolerant of other workers creating them at the same time."""
    from sqlalchemy.exc import IntegrityError, InternalError, ProgrammingError

    target = _driver_url(url)
    for attempt in range(RDB_ATTEMPTS):
        try:
            storage = RDBStorage(target)
            break
        except (IntegrityError, ProgrammingError, InternalError) as exc:
            # Two workers creating the schema at once: one's CREATE TABLE collides with the
            # other's (UniqueViolation on pg_type, "already exists"). The tables are there now.
            if attempt == RDB_ATTEMPTS - 1:
                raise NasProxyError(f"cannot open storage {redact(url)!r}: {_first_line(exc)}") from exc
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))  # jitter, so the retries do not collide
        except NasProxyError:
            raise
        except Exception as exc:  # sqlalchemy raises many types: refused, unknown database, bad credentials
            raise NasProxyError(f"cannot open storage {redact(url)!r}: {_first_line(exc)}") from exc
    configure_heartbeat(storage, heartbeat)
    return storage


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def open_storage(
    storage: str | Path | BaseStorage | None, study_name: str, heartbeat: int | None = DEFAULT_HEARTBEAT
) -> BaseStorage:
    """``None`` -> journal file ``results/studies/<study_name>.log``; ``scheme://...`` -> RDB; else a journal path.

    A storage object is used as it is. An RDB that cannot be reached (or whose driver is
    missing) raises one NasProxyError line, its password hidden.
    """
    if isinstance(storage, BaseStorage):
        return storage
    where = resolve_storage(storage, study_name)
    if "://" in where:
        return rdb_storage(where, heartbeat)
    return default_storage(where, heartbeat)


# ----------------------------------------------------------------------------- seeds


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a study seeded with ``seed`` (32 bits of SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


class TrialSeededSampler(BaseSampler):
    """Samples trial *n* with a fresh sampler from ``make(trial_seed(seed, n))``.

    Seeds follow trial numbers, which the storage hands out once each: every worker of a study
    proposes different trials, and a study run by one worker is the same however often it was
    interrupted. Model-based samplers (TPE, NSGA-II) still read the whole study's history; only
    their randomness is tied to the trial.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make = make
        self._seed = seed
        self._lock = threading.Lock()
        self._by_trial: dict[int, BaseSampler] = {}

    def sampler_for(self, trial: FrozenTrial) -> BaseSampler:
        """The sampler of ``trial`` (made on first use, dropped when the trial ends)."""
        with self._lock:
            sampler = self._by_trial.get(trial._trial_id)
            if sampler is None:
                sampler = self._by_trial[trial._trial_id] = self._make(trial_seed(self._seed, trial.number))
            return sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.sampler_for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.sampler_for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self.sampler_for(trial).sample_independent(study, trial, name, distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler_for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        try:
            self.sampler_for(trial).after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._by_trial.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:
        pass  # seeds come from trial numbers; Optuna's reseeding per thread would break that


# ----------------------------------------------------------------------------- the budget


def uses_budget(trial: FrozenTrial) -> bool:
    """Whether a finished trial counts toward ``n_trials``: complete, pruned, or failed by divergence."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "diverged"


def _holds(trial: FrozenTrial) -> bool:
    # Counted, or on its way to be: running, or queued to run.
    return uses_budget(trial) or trial.state in (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Budget:
    """A study's trials against its budget ``total``."""

    total: int
    counted: int  # complete, pruned or diverged
    running: int
    waiting: int  # queued: enqueued by hand, or a stale trial's retry
    failed: int  # failed by an exception or an interrupt: not counted
    stale: int  # failed because their worker's heartbeat stopped (each is retried)
    over_budget: int  # started past the budget by a worker racing another: never trained

    @property
    def done(self) -> bool:
        return self.counted >= self.total

    @property
    def free(self) -> int:
        """Slots no worker works on yet (queued trials take theirs first)."""
        return max(0, self.total - self.counted - self.running)

    def text(self) -> str:
        """One line, e.g. ``8 of 8 trials counted (complete, pruned or diverged); also 1 lost with their
        worker (retried), 1 over budget (never trained)``."""
        parts = [f"{self.counted} of {self.total} trials counted (complete, pruned or diverged)"]
        extra = []
        if self.running:
            extra.append(f"{self.running} running")
        if self.waiting:
            extra.append(f"{self.waiting} queued")
        if self.failed:
            extra.append(f"{self.failed} failed or interrupted")
        if self.stale:
            extra.append(f"{self.stale} lost with their worker (retried)")
        if self.over_budget:
            extra.append(f"{self.over_budget} over budget (never trained)")
        return parts[0] + (f"; also {', '.join(extra)}" if extra else "")


def budget_of(study: optuna.Study, n_trials: int) -> Budget:
    """Count ``study``'s trials against a budget of ``n_trials``."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    counted = running = waiting = failed = stale = over = 0
    for t in trials:
        if uses_budget(t):
            counted += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.WAITING:
            waiting += 1
        elif t.user_attrs.get("status") == OVER_BUDGET:
            over += 1
        elif t.number in retried:
            stale += 1
        elif t.state == TrialState.FAIL:
            failed += 1
    return Budget(n_trials, counted, running, waiting, failed, stale, over)


def within_budget(trials: Sequence[FrozenTrial], number: int, trial_id: int, n_trials: int) -> bool:
    """Whether trial ``number`` may run: fewer than ``n_trials`` trials before it are counted, running or queued.

    Trial numbers are handed out once each, in order, so of two workers starting the last slot's
    trial at once exactly one sees the other's trial before its own: the budget is never exceeded.
    (``trial_id`` breaks ties of an RDB that numbered two trials alike.)
    """
    me = (number, trial_id)
    return sum(1 for t in trials if (t.number, t._trial_id) < me and _holds(t)) < n_trials


@dataclass
class _Round:
    """One ``optimize`` call of :func:`run_trials`: trials started, and whether the budget stopped it."""

    started: int = 0
    budget_stopped: bool = False


def _gated(
    objective: Callable[[optuna.Trial], Any], n_trials: int, multi: bool, round_: _Round
) -> Callable[[optuna.Trial], Any]:
    worker = f"{platform.node()}:{os.getpid()}"

    def run(trial: optuna.Trial) -> Any:
        round_.started += 1
        trial.set_user_attr("worker", worker)  # which machine and process ran it
        study = trial.study
        if not within_budget(study.get_trials(deepcopy=False), trial.number, trial._trial_id, n_trials):
            trial.set_user_attr("status", OVER_BUDGET)
            round_.budget_stopped = True
            study.stop()
            _logger.warning(
                "trial %d not run: another worker took the last of the %d trials at the same moment "
                "(it stays as a FAIL trial with status over-budget)", trial.number, n_trials,
            )
            return (math.nan, math.nan) if multi else math.nan  # FAIL: ignored by every sampler
        return objective(trial)

    return run


def _fail_stale(study: optuna.Study) -> None:
    if heartbeat_of(study._storage) is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _stop_when_taken(n_trials: int, round_: _Round) -> Callable[[optuna.Study, FrozenTrial], None]:
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if budget_of(study, n_trials).free == 0:
            round_.budget_stopped = True
            study.stop()

    return callback


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    n_jobs: int = 1,
    show_progress_bar: bool = False,
    wait: bool = True,
    poll: float | None = None,
) -> Budget:
    """Work on ``study`` as one of any number of workers until it counts exactly ``n_trials`` trials.

    Each round asks for at most the free slots (``n_jobs`` threads here); stale trials of lost
    workers are failed and their retries run first. When every remaining slot is a trial running
    on another worker, ``wait`` (with heartbeats) polls until those finish, or go stale and come
    back here as retries; without heartbeats, or ``wait=False``, it returns then. A study stopped
    by its sampler (the grid sampler, once every point is taken) ends the work early. Returns the
    final :class:`Budget`.
    """
    if n_trials < 1:
        raise NasProxyError(f"n_trials must be at least 1, got {n_trials}")
    beat = heartbeat_of(study._storage)
    told = False
    while True:
        _fail_stale(study)
        budget = budget_of(study, n_trials)
        if budget.done:
            return budget
        if budget.free:
            round_ = _Round()
            study.optimize(_gated(objective, n_trials, len(study.directions) > 1, round_), n_trials=budget.free,
                           n_jobs=min(n_jobs, budget.free), callbacks=[_stop_when_taken(n_trials, round_)],
                           show_progress_bar=show_progress_bar)
            if round_.started < budget.free and not round_.budget_stopped:
                _logger.info("the sampler ended the study before its budget (the grid sampler: every point was run)")
                return budget_of(study, n_trials)
            told = False
            continue
        if beat is None or not wait:
            return budget
        if not told:
            _logger.info(
                "waiting for %d trial(s) running on other workers, the study's last; one whose worker is lost is "
                "failed after %d s without a heartbeat and run again here", budget.running, GRACE_BEATS * beat,
            )
            told = True
        time.sleep(poll if poll is not None else min(5.0, beat / 2))


__all__ = [
    "DEFAULT_HEARTBEAT",
    "OVER_BUDGET",
    "Budget",
    "HeartbeatJournalStorage",
    "TrialSeededSampler",
    "budget_of",
    "configure_heartbeat",
    "default_storage",
    "default_storage_path",
    "heartbeat_of",
    "open_storage",
    "rdb_storage",
    "redact",
    "resolve_storage",
    "retry_callback",
    "run_trials",
    "trial_seed",
    "uses_budget",
    "within_budget",
]
