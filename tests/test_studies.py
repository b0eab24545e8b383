"""Several workers on one Optuna study: seeds per trial, an exact budget, heartbeats, storages (journal, PostgreSQL)."""

from __future__ import annotations

import importlib
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

import nas_proxy
from nas_proxy import studies
from nas_proxy.data import load_dataset
from nas_proxy.errors import NasProxyError
from nas_proxy.proxies import get_builder, save_proxy
from nas_proxy.search import create_study, suggest_arch
from nas_proxy.space import load_space
from nas_proxy.studies import (
    OVER_BUDGET,
    HeartbeatJournalStorage,
    budget_of,
    default_storage,
    open_storage,
    resolve_storage,
    run_trials,
    trial_seed,
    within_budget,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(nas_proxy.__file__).resolve().parents[1]


@pytest.fixture
def proxy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    train, _ = load_dataset("synthetic")
    return save_proxy(get_builder("random", ipc=2, seed=0).build(train), tmp_path / "p.npz")


def _value(trial: optuna.Trial) -> float:
    spec = suggest_arch(trial, load_space("convnet720-narrow"))
    return float(spec.depth * 1000 + spec.width)


# ----------------------------------------------------------------------------- seeds per trial


def test_each_trial_samples_with_its_own_seed(tmp_path: Path) -> None:
    assert trial_seed(0, 3) == trial_seed(0, 3) and len({trial_seed(0, n) for n in range(100)}) == 100
    space = load_space("convnet720-narrow")
    one = create_study(space, "random", "none", default_storage(tmp_path / "a.log"), "s", seed=0)
    one.optimize(_value, n_trials=6)
    # The same study built by three "workers" in turns (each a fresh sampler, as a new process):
    # trial n gets the same architecture, because its seed is (seed, n), not the process's.
    for _ in range(3):
        part = create_study(space, "random", "none", default_storage(tmp_path / "b.log"), "s", seed=0)
        part.optimize(_value, n_trials=2)
    archs = [[t.user_attrs["arch_id"] for t in s.trials] for s in (one, part)]
    assert archs[0] == archs[1] and len(set(archs[0])) == 6
    # Another seed is another study: different proposals.
    other = create_study(space, "random", "none", seed=1)
    other.optimize(_value, n_trials=6)
    assert [t.user_attrs["arch_id"] for t in other.trials] != archs[0]


# ----------------------------------------------------------------------------- the budget


def _trial(number: int, state: TrialState, **attrs: Any) -> FrozenTrial:
    t = optuna.trial.create_trial(
        state=state, value=1.0 if state == TrialState.COMPLETE else None,
        params={"x": 0}, distributions={"x": CategoricalDistribution([0])}, user_attrs=attrs,
    )
    t.number, t._trial_id = number, number
    return t


def test_within_budget_lets_exactly_one_of_two_racing_trials_run() -> None:
    done = [_trial(i, TrialState.COMPLETE) for i in range(6)]
    # Two workers ask for the last two slots of 8 at once, and a third for one more: trials 6, 7, 8.
    racing = [*done, _trial(6, TrialState.RUNNING), _trial(7, TrialState.RUNNING), _trial(8, TrialState.RUNNING)]
    assert [within_budget(racing, n, n, 8) for n in (6, 7, 8)] == [True, True, False]
    # Failed trials free their slot; a diverged one counts; a queued retry holds its slot.
    mixed = [*done, _trial(6, TrialState.FAIL), _trial(7, TrialState.FAIL, status="diverged"),
             _trial(8, TrialState.WAITING), _trial(9, TrialState.RUNNING)]
    assert within_budget(mixed, 9, 9, 9) and not within_budget(mixed, 9, 9, 8)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_over_budget_trial_is_recorded_not_trained(tmp_path: Path) -> None:
    study = create_study(load_space("tiny"), "random", "none", default_storage(tmp_path / "s.log"), "s")
    others = [study.ask() for _ in range(2)]  # two trials another worker runs right now
    calls: list[int] = []
    # As if this worker had asked past the pre-check in the same instant: the gate refuses trial 2.
    round_ = studies._Round()
    study.optimize(studies._gated(lambda t: calls.append(t.number) or 1.0, 2, False, round_), n_trials=1)
    (mine,) = study.get_trials(states=(TrialState.FAIL,))
    assert calls == [] and mine.number == 2 and mine.user_attrs["status"] == OVER_BUDGET
    assert round_.budget_stopped
    for t in others:
        study.tell(t, 0.5)
    budget = budget_of(study, 2)
    assert (budget.counted, budget.over_budget, budget.done) == (2, 1, True)
    assert budget.text() == "2 of 2 trials counted (complete, pruned or diverged); also 1 over budget (never trained)"


def test_run_trials_counts_the_study_not_the_call(tmp_path: Path) -> None:
    space = load_space("convnet720-narrow")
    study = create_study(space, "random", "none", default_storage(tmp_path / "s.log"), "s")
    assert run_trials(study, _value, 3).counted == 3
    assert run_trials(study, _value, 5).counted == 5  # a rerun with a larger budget runs 2 more
    assert len(study.trials) == 5
    grid = create_study(load_space("tiny"), "grid", "none", default_storage(tmp_path / "g.log"), "g")
    budget = run_trials(grid, lambda t: float(suggest_arch(t, load_space("tiny")).width), 40)
    assert budget.counted == 16 and not budget.done  # the grid sampler ends the study after its 16 points


# ----------------------------------------------------------------------------- heartbeats


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_silent_trial_is_failed_and_enqueued_again(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    space = load_space("tiny")
    dead = create_study(space, "random", "none", default_storage(path), "s", heartbeat=1)
    trial = dead.ask()
    suggest_arch(trial, space)
    dead._storage.record_heartbeat(trial._trial_id)  # one beat, then its worker "dies"
    storage = open_storage(path, "s")  # another worker's view: it adopts the study's interval
    study = create_study(space, "random", "none", storage, "s")
    assert isinstance(storage, HeartbeatJournalStorage) and storage.heartbeat_interval == 1
    storage.grace_period = 0.3  # type: ignore[assignment]  # (a test need not wait two seconds)
    studies._fail_stale(study)  # first sight of its heartbeat: not stale yet
    assert study.trials[0].state == TrialState.RUNNING
    time.sleep(0.5)
    studies._fail_stale(study)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.params == first.params and retry.system_attrs["failed_trial"] == first.number
    assert budget_of(study, 4).stale == 1
    with pytest.raises(NasProxyError, match=r"sends heartbeats every 1 s .* leave out --heartbeat or give 1"):
        create_study(space, "random", "none", open_storage(path, "s"), "s", heartbeat=5)


# ----------------------------------------------------------------------------- storages


def test_storage_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_storage(None, "x") == str(tmp_path / "results" / "studies" / "x.log")
    assert resolve_storage("j.log", "x") == str(tmp_path / "j.log")
    assert resolve_storage("sqlite:///s.db", "x") == f"sqlite:///{tmp_path / 's.db'}"
    assert resolve_storage("postgresql://u@127.0.0.1/db", "x") == "postgresql://u@127.0.0.1/db"


def test_a_missing_postgres_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_drivers(name: str, *args: Any) -> Any:
        if name in ("psycopg", "psycopg2"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_drivers)
    with pytest.raises(NasProxyError, match=r"no PostgreSQL driver is installed \(psycopg or psycopg2\); "
                                            r"pip install 'nas-proxy\[postgres\]'"):
        open_storage("postgresql://me:secret@127.0.0.1:1/db", "s")
    with pytest.raises(NasProxyError, match=r"its driver 'MySQLdb' \(mysql\) is not installed"):
        open_storage("mysql://me@127.0.0.1:1/db", "s")


def test_tables_created_by_another_worker_at_once_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import IntegrityError

    calls: list[str] = []

    class CollidesOnce(studies.RDBStorage):
        def __init__(self, url: str, **kw: Any) -> None:
            calls.append(url)
            if len(calls) == 1:  # what PostgreSQL says when two CREATE TABLEs race
                raise IntegrityError("CREATE TABLE studies", {}, Exception(
                    'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
            super().__init__(url, **kw)

    monkeypatch.setattr(studies, "RDBStorage", CollidesOnce)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", "s")
    assert len(calls) == 2 and studies.heartbeat_of(storage) == studies.DEFAULT_HEARTBEAT


# ----------------------------------------------------------------------------- workers as processes


def _search_argv(proxy: Path, storage: str, *extra: str) -> list[str]:
    return ["search", "--proxy", str(proxy), "--storage", storage, "--study-name", "shared", "--no-progress",
            "--test-subset", "50", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NAS_PROXY_DEVICE": "cpu"}


def _workers(argv: list[str], n: int, cwd: Path) -> list[subprocess.Popen[str]]:
    cmd = [sys.executable, "-m", "nas_proxy.cli", *argv]
    return [subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(n)]


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def _counted_archs(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.user_attrs["arch_id"] for t in study.trials if studies.uses_budget(t)}


def _alone(n: int) -> dict[int, str]:
    """The architectures of trials 0..n-1 when one worker runs the CLI's study (tpe, seed 0) alone.

    TPE samples its first 10 trials at random, so no training is needed to know them."""
    study = create_study(load_space("convnet720-narrow"), "tpe", "none", seed=0)
    study.optimize(_value, n_trials=n)
    return _counted_archs(study)


def _check_shared_study(storage: str, reference: dict[int, str], n: int) -> optuna.Study:
    study = optuna.load_study(study_name="shared", storage=open_storage(storage, "shared"))
    assert budget_of(study, n).counted == n  # exactly the budget, however the workers raced
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    counted = _counted_archs(study)
    # Every trial ran once, with the architecture one worker alone gives trial n: N workers do
    # N different trials, the same results.
    assert counted == reference and len(set(counted.values())) == n
    return study


# Narrow candidates, 30 epochs on the 20-image proxy: trials of a fraction of a second, so both
# workers, started together, take part.
SHARED = ["--space", "convnet720-narrow", "--epochs", "30", "--n-trials", "8", "--pruner", "none"]


def test_two_search_processes_on_one_journal(proxy_file: Path, tmp_path: Path) -> None:
    n, journal = 8, tmp_path / "shared.log"
    outs = _finish(_workers(_search_argv(proxy_file, str(journal), *SHARED), 2, tmp_path))
    study = _check_shared_study(str(journal), _alone(n), n)
    assert any("more join with the same command and --storage " + str(journal) in o for o in outs)
    assert all(f"budget:   {n} of {n} trials counted" in o for o in outs)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both did work


def test_a_killed_search_worker_trial_is_failed_and_run_again(proxy_file: Path, tmp_path: Path) -> None:
    journal = tmp_path / "shared.log"
    # Trials of a few seconds, heartbeats every second: the kill lands inside a trial.
    argv = _search_argv(proxy_file, str(journal), "--space", "tiny", "--epochs", "300", "--n-trials", "3",
                        "--heartbeat", "1", "--pruner", "none")
    survivor, victim = _workers(argv, 2, tmp_path)
    tag = f"{platform.node()}:{victim.pid}"
    deadline = time.monotonic() + 120
    killed: FrozenTrial | None = None
    while killed is None:
        assert time.monotonic() < deadline and victim.poll() is None, "the victim never ran a trial"
        if journal.exists():
            study = optuna.load_study(study_name="shared", storage=default_storage(journal))
            running = study.get_trials(states=(TrialState.RUNNING,))
            # Its architecture complete (arch_id is set after the last suggest): a kill between two
            # suggests would leave the lost trial with fewer parameters than its retry.
            killed = next((t for t in running if t.user_attrs.get("worker") == tag and "arch_id" in t.user_attrs), None)
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    (out,) = _finish([survivor])
    study = optuna.load_study(study_name="shared", storage=default_storage(journal))
    budget = budget_of(study, 3)
    assert (budget.counted, budget.stale, budget.running, budget.waiting) == (3, 1, 0, 0)
    lost = study.trials[killed.number]
    assert lost.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.user_attrs["worker"] == f"{platform.node()}:{survivor.pid}"
    assert "budget:   3 of 3 trials counted (complete, pruned or diverged); also 1 lost with their worker" in out


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    dirs = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian keeps them off PATH
    return next((d for d in dirs if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of our own in a temporary folder, on a free 127.0.0.1 port; its base URL."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        psycopg = importlib.import_module("psycopg")
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'nas-proxy[postgres]'")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres account
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' account to run the server as")
        run_as = {"user": "postgres", "group": "postgres"}
    root = Path(tempfile.mkdtemp(prefix="nas-proxy-pg-"))  # under /tmp: the postgres account can enter it
    if run_as:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    started = False
    try:
        subprocess.run([bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "nasproxy", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120, **run_as)
        subprocess.run([bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "60", "-o",
                        f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=50", "start"],
                       check=True, capture_output=True, timeout=90, **run_as)
        started = True
        url = f"postgresql://nasproxy@127.0.0.1:{port}"
        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            conn.execute("SELECT 1")
        yield url
    finally:
        if started:
            subprocess.run([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True,
                           timeout=60, **run_as)
        shutil.rmtree(root, ignore_errors=True)


def _database(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"  # no driver in the URL, as the README writes it


def test_search_workers_on_postgresql(postgres: str, proxy_file: Path, tmp_path: Path) -> None:
    n, url = 8, _database(postgres, "shared")
    # Three workers start together on an empty database: all create its tables at once.
    outs = _finish(_workers(_search_argv(proxy_file, url, *SHARED), 3, tmp_path))
    _check_shared_study(url, _alone(n), n)
    assert all(f"budget:   {n} of {n} trials counted" in o for o in outs)
    assert studies.heartbeat_of(open_storage(url, "shared")) == studies.DEFAULT_HEARTBEAT


_OPEN_AT_ONCE = """
import sys, time
from nas_proxy.studies import open_storage
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
open_storage(sys.argv[1], "s")
"""


def test_workers_creating_the_tables_at_once_on_postgresql(postgres: str) -> None:
    # Optuna alone: of six processes creating a fresh database's tables in the same instant,
    # some die with UniqueViolation on pg_type (seen here: 1 to 3 of 6). All six must succeed.
    url = _database(postgres, "race")
    start = f"{time.time() + 8:.3f}"  # after every process has imported its modules
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, start], env=_env(),
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
