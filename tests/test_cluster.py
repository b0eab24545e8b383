"""Dask evaluation on real clusters started here on 127.0.0.1: bad addresses fail fast, workers die, data goes once."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import nas_proxy
from nas_proxy import cluster
from nas_proxy.cli import main
from nas_proxy.data import Split, load_dataset, make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.evaluate import evaluate
from nas_proxy.proxies import get_builder, save_proxy
from nas_proxy.sources import full_source, proxy_source
from nas_proxy.space import load_space
from nas_proxy.store import ResultsStore, RunRow
from nas_proxy.train import TrainConfig

distributed = pytest.importorskip("distributed")

REPO = Path(nas_proxy.__file__).resolve().parents[1]
CFG = TrainConfig(epochs=20, batch_size=16)
COLUMNS = ["arch_id", "source_id", "seed", "config_hash", "status", "accuracy", "steps", "params"]


def _env() -> dict[str, str]:
    # Worker processes import this checkout's nas_proxy and train on one torch thread.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NAS_PROXY_DEVICE": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _results(out: Path) -> pd.DataFrame:
    frame = ResultsStore(out).frame()
    return frame[COLUMNS].sort_values(["source_id", "arch_id", "seed"]).reset_index(drop=True)


@pytest.fixture
def data() -> tuple[Split, Split]:
    return make_synthetic(num_classes=4, train_per_class=16, test_per_class=8, size=12, seed=0)


# ----------------------------------------------------------------------------- servers that are not Dask


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts and says nothing, as an HTTP server (the dashboard) does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel completes connections from the backlog; nothing is ever sent
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def talking_server() -> Iterator[str]:
    """A TCP port that answers every connection with an HTTP error, as other services greet."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def test_check_address_refuses_what_is_not_a_scheduler(silent_server: str, talking_server: str) -> None:
    start = time.monotonic()
    with pytest.raises(NasProxyError, match=r"is not a Dask scheduler: it sent no Dask handshake within 0\.5 s"):
        cluster.check_address(silent_server, timeout=0.5)
    assert time.monotonic() - start < 5  # bounded: no hang
    with pytest.raises(NasProxyError, match=r"answered b'HTTP/1.1'\.\.\., not a Dask handshake"):
        cluster.check_address(talking_server, timeout=2)
    with pytest.raises(NasProxyError, match=r"cannot reach a Dask scheduler at tcp://127\.0\.0\.1:\d+: Connection ref"):
        cluster.check_address(f"127.0.0.1:{_free_port()}", timeout=2)
    with pytest.raises(NasProxyError, match=r"unknown scheme 'nonsense' .*; valid: inproc, tcp, tls"):
        cluster.check_address("nonsense://x")
    with pytest.raises(NasProxyError, match="names no host"):
        cluster.check_address("tcp://")


def _evaluate_argv(proxy: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--space", "tiny", "--dataset", "synthetic", "--proxy", str(proxy), "--epochs", "1",
        "--no-progress", "--backend", "dask", "--out", str(out), *extra,
    ]


@pytest.fixture
def proxy_file(tmp_path: Path) -> Path:
    train, _ = load_dataset("synthetic")
    return save_proxy(get_builder("random", ipc=2, seed=0).build(train), tmp_path / "random.npz")


@pytest.mark.parametrize("where", ["silent", "talking", "closed", "scheme", "n_jobs"])
def test_a_bad_scheduler_is_one_line_exit_2_and_nothing_written(
    where: str, silent_server: str, talking_server: str, proxy_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, extra, message = {
        "silent": (silent_server, [], "is not a Dask scheduler: it sent no Dask handshake within 1 s"),
        "talking": (talking_server, [], "not a Dask handshake"),
        "closed": (f"tcp://127.0.0.1:{_free_port()}", [], "cannot reach a Dask scheduler"),
        "scheme": ("nonsense://x", [], "unknown scheme 'nonsense'"),
        "n_jobs": (silent_server, ["--n-jobs", "2"], "--n-jobs sizes a local cluster"),
    }[where]
    out = tmp_path / "run"
    start = time.monotonic()
    argv = _evaluate_argv(proxy_file, out, "--scheduler", address, "--cluster-timeout", "1", *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing written before the cluster was checked
    assert time.monotonic() - start < 30


# ----------------------------------------------------------------------------- worker checks


def test_workers_that_cannot_serve_are_named() -> None:
    client = cluster._client_facts()
    ok = {**client, "host": "h", "python": "3", "device": "cpu", "error": ""}
    facts: dict[str, Any] = {
        "tcp://a:1": ok,
        "tcp://b:1": {**ok, "nas_proxy": "0.0.9+abc"},
        "tcp://c:1": {**ok, "distributed": "1.0"},
        "tcp://d:1": {**ok, "error": "device 'cuda' requested but CUDA is not available; use cpu or auto"},
        "tcp://e:1": ModuleNotFoundError("No module named 'nas_proxy'"),
    }
    problems = cluster._problems(facts, client)
    assert problems == [
        f"worker tcp://b:1 runs nas-proxy 0.0.9+abc, this client {client['nas_proxy']}",
        f"worker tcp://c:1 runs distributed 1.0, this client {client['distributed']}",
        "worker tcp://d:1: device 'cuda' requested but CUDA is not available; use cpu or auto",
        f"worker tcp://e:1 cannot run nas-proxy (ModuleNotFoundError: No module named 'nas_proxy'); "
        f"install nas-proxy {nas_proxy.__version__} there",
    ]
    assert cluster._checked_call(cluster.package_fingerprint(), len, "abc") == 3
    with pytest.raises(cluster.ClusterError, match=r"runs nas-proxy .*, the client 0\.0\.9"):
        cluster._checked_call("0.0.9+abc", len, "abc")  # a worker that joined late with other code


# ----------------------------------------------------------------------------- a LocalCluster of processes


@pytest.fixture
def two_workers() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            silence_logs=logging.CRITICAL, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        ) as c,
        distributed.Client(c) as client,
    ):
        yield client


def test_a_killed_worker_loses_and_duplicates_nothing(
    two_workers: Any, data: tuple[Split, Split], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = two_workers
    train, test = data
    specs = [s.id for s in load_space("tiny")][:8]
    sources = [proxy_source(get_builder("random", ipc=2, seed=0).build(train), CFG), full_source(train, CFG)]
    evaluate(specs, sources, test, out_dir=tmp_path / "one", progress=False)

    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    shared: list[int] = []

    def kill_after_the_first(row: RunRow) -> None:
        if not shared:
            # The data each task trains on: one key per distinct Split, not one per task.
            shared.append(client.run_on_scheduler(
                lambda dask_scheduler: sum(str(k).startswith("Split-") for k in dask_scheduler.tasks)))
            os.kill(pids[victim], signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="nas_proxy.cluster"):
        res = evaluate(
            specs, sources, test, out_dir=tmp_path / "dask", backend="dask", scheduler=client, progress=False,
            on_result=kill_after_the_first,
        )
    assert shared == [3]  # proxy, whole training set, test set: 16 tasks, each Split sent once
    assert f"lost Dask worker {victim}" in caplog.text
    rows = ResultsStore(tmp_path / "dask").rows()
    assert res.trained == len(rows) == len({r.key for r in rows}) == 2 * len(specs)  # none lost, none twice
    pd.testing.assert_frame_equal(_results(tmp_path / "one"), _results(tmp_path / "dask"))
    # The shared data is released afterwards: no worker holds anything.
    deadline = time.monotonic() + 10
    while any(client.run(lambda dask_worker: len(dask_worker.data)).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(client.run(lambda dask_worker: len(dask_worker.data)).values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a worker without CUDA")
def test_workers_resolve_their_own_device_unless_pinned(data: tuple[Split, Split], tmp_path: Path) -> None:
    train, test = data
    specs = [s.id for s in load_space("tiny")][:2]
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NAS_PROXY_DEVICE": "cuda"}  # the worker's own choice
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            silence_logs=logging.CRITICAL, env=env,
        ) as c,
        distributed.Client(c) as client,
    ):
        (worker,) = client.nthreads()
        # This process trains on the CPU (NAS_PROXY_DEVICE=cpu); the worker asks for CUDA it lacks.
        with pytest.raises(NasProxyError, match=rf"worker {worker}: device 'cuda' requested but CUDA is not avail"):
            evaluate(specs, [full_source(train, CFG)], test, out_dir=tmp_path / "auto", backend="dask",
                     scheduler=client, progress=False)
        assert not (tmp_path / "auto").exists()
        res = evaluate(specs, [full_source(train, CFG)], test, out_dir=tmp_path / "pinned", backend="dask",
                       scheduler=client, device="cpu", progress=False)
    assert res.ok == 2
    (invocation,) = ResultsStore(tmp_path / "pinned").read_protocol()["invocations"]  # type: ignore[index]
    assert invocation["device"] == "cpu" and invocation["n_jobs"] is None
    assert invocation["cluster"]["workers"][worker]["device"] == "cpu"


# ----------------------------------------------------------------------------- `dask scheduler` + `dask worker`


class _Processes:
    """A `dask scheduler` and its `dask worker`s, started as commands on 127.0.0.1 (port 0: the OS picks)."""

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "scheduler.json"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp
        self.scheduler = self._start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
        deadline = time.monotonic() + 60
        while not self.file.exists():
            assert time.monotonic() < deadline, (tmp / "scheduler.log").read_text()
            time.sleep(0.2)
        self.address = str(json.loads(self.file.read_text())["address"])

    def _start(self, args: list[str]) -> subprocess.Popen[bytes]:
        dask = [sys.executable, "-m", "distributed.cli.dask_" + args[0].replace("-", "_")]
        log = open(self.logs / f"{args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([*dask, *args[1:], "--scheduler-file", str(self.file)], env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        # No nanny: a killed worker stays dead, as a lost machine does.
        return self._start(["worker", "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard"])

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def dask_processes(tmp_path: Path) -> Iterator[_Processes]:
    procs = _Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


# Real scheduler and worker processes killed and restarted: timing-sensitive on a loaded 2-core
# machine (one failure in three runs there, at load average 4-5), so it runs with -m slow.
@pytest.mark.slow
def test_every_worker_lost_is_one_line_and_a_rerun_resumes(
    dask_processes: _Processes, proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = dask_processes.worker()
    out = tmp_path / "run"
    argv = _evaluate_argv(proxy_file, out, "--epochs", "30", "--scheduler", dask_processes.address,
                          "--cluster-timeout", "3")

    def kill_after_the_first_row() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "runs.jsonl").exists() and (out / "runs.jsonl").read_text().count("\n") >= 1:
                worker.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_the_first_row, daemon=True)
    killer.start()
    assert main(argv) == 2
    killer.join(5)
    err = capsys.readouterr().err
    stored = len(ResultsStore(out).rows())
    assert 1 <= stored < 16
    lines = err.splitlines()
    assert lines[0].startswith("Dask cluster tcp://127.0.0.1:") and "1 workers (1 cpu)" in lines[0]
    assert lines[1].startswith("warning: lost Dask worker tcp://127.0.0.1:")
    # Gone with the only worker, the shared data is; or no worker is back within --cluster-timeout.
    assert lines[2].startswith(f"error: every Dask worker of {dask_processes.address} is gone")
    assert lines[2].endswith(
        f"; finished runs stored in {out}: {stored}, missing: {16 - stored}; start workers, then rerun the same "
        f"command to resume"
    )
    assert len(lines) == 3

    dask_processes.worker()  # a new machine joins; the same command finishes the rest
    # A worker process can take seconds to start on a loaded machine: wait for it up to a minute.
    assert main([*argv[:-1], "60"]) == 0
    missing = 16 - stored
    assert f"16 planned, {stored} already stored, {missing} trained now ({missing} ok" in capsys.readouterr().out
    rows = ResultsStore(out).rows()
    assert len(rows) == len({r.key for r in rows}) == 16


def test_a_worker_moves_a_shared_split_to_its_device_once() -> None:
    import gc

    from nas_proxy import evaluate as evaluate_module

    train, _ = make_synthetic(num_classes=2, train_per_class=2, test_per_class=1, size=8)
    # "meta" stands in for a GPU: a worker process (keep=True) copies a Split there once...
    first = evaluate_module._materialize(train, "meta", True)
    assert first.device.type == "meta" and evaluate_module._materialize(train, "meta", True) is first
    # ...and frees the copy with the Split itself (when Dask releases the shared data).
    del first, train
    gc.collect()
    assert not evaluate_module._DEVICE_COPIES
    # One process of its own keeps nothing beyond the call.
    other, _ = make_synthetic(num_classes=2, train_per_class=2, test_per_class=1, size=8)
    assert evaluate_module._materialize(other, "meta") is not evaluate_module._materialize(other, "meta")
    assert not evaluate_module._DEVICE_COPIES
