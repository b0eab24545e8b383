"""Dask clusters for ``evaluate``: connect and check one, share data with its workers, run tasks that outlive workers.

- :func:`connect` takes a scheduler address (or a ``distributed.Client``, or nothing: a
  LocalCluster of worker processes on 127.0.0.1) and checks it before anything else happens: a
  bad address, an unknown scheme or a service that is not a Dask scheduler (the dashboard's HTTP
  port is an easy mistake) is one :class:`NasProxyError` line within ``timeout`` seconds, never
  a hang; so is a scheduler without workers, a worker that runs another nas-proxy (version and
  source digest), another ``distributed``, or that cannot use the device asked for.
- :meth:`DaskSession.share` sends large read-only data (the training set) to every worker once,
  and releases it when the block ends; tasks receive it by reference.
- :meth:`DaskSession.map_unordered` runs one call per task and yields results as they finish.
  A lost worker is reported (logger ``nas_proxy.cluster``) and Dask runs its tasks again on the
  others, so nothing is lost or duplicated; a worker that joins later is checked like the first
  ones; when no worker is left for ``timeout`` seconds, the scheduler is gone, or the shared
  data died with the workers, it raises :class:`ClusterError` (one line) after every finished
  result was yielded.

Devices are resolved on each worker (``NAS_PROXY_DEVICE`` there, else CUDA when present, else
the CPU) unless the caller pins one for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import platform
import queue
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as WaitTimeout
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from nas_proxy.device import resolve_device
from nas_proxy.errors import NasProxyError, one_line

# How long to wait for the cluster: to connect, for a first worker, and with no worker left.
DEFAULT_TIMEOUT = 30.0
# The worker list is looked at once a second at most while tasks run.
POLL_SECONDS = 1.0
DASK_PORT = 8786  # a scheduler's default port (the dashboard's is 8787)
# A Dask server sends its handshake as soon as it accepts a connection; a server silent this long
# after accepting is something else (an HTTP server waits for a request forever).
HANDSHAKE_SECONDS = 10.0
# A Dask TCP message starts with its length as 8 little-endian bytes; a handshake is tens of bytes.
# Anything larger is another protocol (the ASCII of "HTTP/1.1" reads as 3.5e18 bytes).
_MAX_HANDSHAKE = 1 << 20

_logger = logging.getLogger(__name__)
_R = TypeVar("_R")


class ClusterError(NasProxyError):
    """The cluster failed under a run (every worker lost, a mismatched worker joined); one line.

    ``restart``: what to start again before a rerun, as the start of a sentence ("" if nothing).
    """

    def __init__(self, message: str, restart: str = "") -> None:
        super().__init__(message)
        self.restart = restart


_START_WORKERS = "start workers, then "
_START_ALL = "start the scheduler and its workers, then "


# ----------------------------------------------------------------------------- what a worker is


@functools.cache
def source_digest() -> str:
    """SHA-256 (12 hex digits) of the package's source files: the same version number can hide edits."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c", ".toml") and p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def package_fingerprint() -> str:
    """``0.1.0+<source digest>``: what client and workers must agree on."""
    # Here, not at the top: the package sets __version__ after importing its modules.
    from nas_proxy import __version__

    return f"{__version__}+{source_digest()}"


@dataclass(frozen=True)
class WorkerFacts:
    """What one worker runs and on which device it trains (``error``: why it cannot)."""

    address: str
    host: str
    nas_proxy: str
    distributed: str
    torch: str
    python: str
    device: str
    error: str = ""


def worker_facts(device: str | None = None) -> dict[str, str]:
    """Run on a worker: versions, and the device it resolves (``device`` pinned, else its own default)."""
    import distributed

    try:
        dev, error = str(resolve_device(device)), ""
    except NasProxyError as exc:
        dev, error = "", str(exc)
    return {
        "host": platform.node(),
        "nas_proxy": package_fingerprint(),
        "distributed": distributed.__version__,  # type: ignore[attr-defined]
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev,
        "error": error,
    }


def _client_facts() -> dict[str, str]:
    import distributed

    return {
        "nas_proxy": package_fingerprint(),
        "distributed": distributed.__version__,  # type: ignore[attr-defined]
        "torch": torch.__version__,
    }


def _checked_call(expected: str, fn: Callable[..., _R], *args: Any) -> _R:
    """Run on a worker: ``fn(*args)``, refused when the worker's nas-proxy is not the client's.

    Checked per task because a worker may join after the start (its results would otherwise be
    stored as if the client's code had made them)."""
    got = package_fingerprint()
    if got != expected:
        raise ClusterError(
            f"a worker on {platform.node()} runs nas-proxy {got}, the client {expected}",
            "give that worker the client's nas-proxy (or stop it), then ",
        )
    return fn(*args)


def _reason(exc: BaseException) -> str:
    """Another library's error, quoted in one of ours: its type and message on one line."""
    return one_line(f"{type(exc).__name__}: {exc}", 300)


def _problems(facts: dict[str, Any], client: dict[str, str]) -> list[str]:
    """Why each worker cannot serve this client (empty: all can); ``facts`` maps address -> dict or exception."""
    out = []
    for addr, f in sorted(facts.items()):
        if isinstance(f, BaseException):
            out.append(
                f"worker {addr} cannot run nas-proxy ({_reason(f)}); install nas-proxy "
                f"{client['nas_proxy'].split('+')[0]} there"
            )
        elif f["nas_proxy"] != client["nas_proxy"]:
            out.append(f"worker {addr} runs nas-proxy {f['nas_proxy']}, this client {client['nas_proxy']}")
        elif f["distributed"] != client["distributed"]:
            out.append(f"worker {addr} runs distributed {f['distributed']}, this client {client['distributed']}")
        elif f["error"]:
            out.append(f"worker {addr}: {f['error']}")
    return out


# ----------------------------------------------------------------------------- addresses


def _need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise NasProxyError("--backend dask needs dask[distributed]: pip install 'nas-proxy[dask]'") from exc


def parse_address(address: str) -> tuple[str, str]:
    """``(scheme, location)`` of a scheduler address (no scheme: tcp), the scheme checked against Dask's."""
    _need_distributed()
    from distributed.comm.addressing import parse_address as dask_parse
    from distributed.comm.registry import backends

    text = address.strip()
    if not text:
        raise NasProxyError("empty Dask scheduler address; give one like tcp://HOST:8786")
    scheme, loc = dask_parse(text, strict=False)
    if scheme not in backends:
        raise NasProxyError(
            f"unknown scheme {scheme!r} in Dask scheduler address {address!r}; valid: {', '.join(sorted(backends))}"
        )
    if not loc:
        raise NasProxyError(f"Dask scheduler address {address!r} names no host; give one like tcp://HOST:8786")
    return scheme, loc


def check_address(address: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The address as Dask spells it, after checking that a Dask server answers there.

    For ``tcp://`` a plain socket connects (bounded by ``timeout``) and reads the first 8 bytes
    a Dask server sends unasked: its handshake's length. Nothing within
    :data:`HANDSHAKE_SECONDS` (an HTTP server, such as the dashboard, waits for a request), a
    closed connection or an implausible length (another protocol) is refused here, before Dask's
    client would wait forever or try to allocate what the stray bytes claim. Then the server is
    asked what it is: a worker's or a nanny's port is refused by name.
    """
    from distributed.comm.addressing import parse_host_port, unparse_address

    scheme, loc = parse_address(address)
    if scheme != "tcp":
        where = unparse_address(scheme, loc)  # tls, ws, ...: Dask's own connect is bounded below
        _check_identity(where, timeout)
        return where
    try:
        host, port = parse_host_port(loc, default_port=DASK_PORT)
    except ValueError as exc:
        raise NasProxyError(f"bad Dask scheduler address {address!r}: {exc}") from exc
    where = f"tcp://{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise NasProxyError(f"cannot resolve the Dask scheduler's host {host!r} ({exc.strerror})") from exc
    except TimeoutError as exc:
        raise NasProxyError(f"no answer from {where} within {timeout:g} s (is a Dask scheduler there?)") from exc
    except OSError as exc:
        raise NasProxyError(
            f"cannot reach a Dask scheduler at {where}: {exc.strerror or exc} (start one with `dask scheduler`)"
        ) from exc
    wait = min(timeout, HANDSHAKE_SECONDS)
    deadline = time.monotonic() + wait
    head = b""
    try:
        while len(head) < 8:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(8 - len(head))
            if not chunk:
                break
            head += chunk
    except (TimeoutError, OSError):
        pass
    finally:
        sock.close()
    not_dask = f"{where} is not a Dask scheduler"
    hint = f"a scheduler listens on {DASK_PORT} by default; {DASK_PORT + 1} is its dashboard"
    if not head:
        raise NasProxyError(f"{not_dask}: it sent no Dask handshake within {wait:g} s ({hint})")
    if len(head) < 8 or not 0 < struct.unpack("<Q", head)[0] <= _MAX_HANDSHAKE:
        raise NasProxyError(f"{not_dask}: it answered {head[:8]!r}..., not a Dask handshake ({hint})")
    _check_identity(where, timeout)
    return where


def _check_identity(address: str, timeout: float) -> None:
    """Ask a Dask server what it is (bounded by ``timeout``): a worker's or nanny's port is refused by name."""
    from distributed.comm.core import connect as dask_connect

    async def identity() -> Any:
        comm = await dask_connect(address, timeout=timeout)  # type: ignore[no-untyped-call]
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded() -> Any:
        return await asyncio.wait_for(identity(), timeout)

    # A thread of its own: the caller may already run an event loop (a notebook).
    pool = ThreadPoolExecutor(1)
    try:
        reply = pool.submit(asyncio.run, bounded()).result(timeout + 5)
    except (TimeoutError, WaitTimeout) as exc:
        raise NasProxyError(f"{address} did not say what it is within {timeout:g} s: not a Dask scheduler?") from exc
    except Exception as exc:  # a refused connection, a TLS scheme without certificates, ...
        raise NasProxyError(f"cannot talk to a Dask scheduler at {address} ({_reason(exc)})") from exc
    finally:
        pool.shutdown(wait=False)
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise NasProxyError(f"{address} is a Dask {kind or 'server'}, not a scheduler; give the scheduler's address")


# ----------------------------------------------------------------------------- sessions


@dataclass
class DaskSession:
    """A checked connection to a Dask cluster; close it (or use ``with``) to release what it started.

    ``owned``: the client (and ``local``: a LocalCluster) was started here and closes with it;
    ``device``: the device pinned for every worker, or None (each resolves its own);
    ``workers``: the facts of every worker seen so far, by address; ``lost``: those that left.
    """

    client: Any
    address: str
    owned: bool
    device: str | None
    timeout: float
    local: bool = False
    workers: dict[str, WorkerFacts] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)

    def __enter__(self) -> DaskSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client, and the LocalCluster when it was started here."""
        if not self.owned:
            return
        cluster = getattr(self.client, "cluster", None)
        self.client.close()
        if cluster is not None:
            cluster.close()

    @property
    def devices(self) -> dict[str, str]:
        return {a: w.device for a, w in self.workers.items()}

    @property
    def device_label(self) -> str:
        """The device every worker trains on, or ``mixed`` (for the batching choices and the record)."""
        if self.device is not None:
            return self.device
        kinds = {d.split(":")[0] for d in self.devices.values()}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def describe(self) -> dict[str, Any]:
        """What a results store records about the cluster of one invocation."""
        return {
            "scheduler": self.address,
            "device": self.device or "per worker",
            "workers": {a: {k: v for k, v in asdict(w).items() if k not in ("address", "error")}
                        for a, w in sorted(self.workers.items())},
        }

    # -- data and tasks

    @contextmanager
    def share(self, objects: Sequence[Any]) -> Iterator[list[Any]]:
        """Futures of ``objects``, each sent once to every worker (not once per task); released at exit.

        Identical objects (``is``) are sent once. A worker that joins later fetches what its
        tasks need from a peer, once.
        """
        unique: dict[int, Any] = {}
        for obj in objects:
            unique.setdefault(id(obj), obj)
        futures = {
            key: self.client.scatter(obj, broadcast=True, hash=False) for key, obj in unique.items()
        }
        try:
            yield [futures[id(obj)] for obj in objects]
        finally:
            # Dropping the last reference releases the data on the scheduler and every worker.
            self.client.cancel(list(futures.values()))
            futures.clear()

    def map_unordered(
        self,
        fn: Callable[..., _R],
        tasks: Sequence[tuple[Any, ...]],
        *,
        on_error: Callable[[int, BaseException], _R] | None = None,
    ) -> Iterator[_R]:
        """``fn(*task)`` for each task on the workers, yielded as each finishes (any order).

        A task that raised (or killed ``distributed.scheduler.allowed-failures`` workers) is
        passed to ``on_error(index, exception)``, whose result is yielded instead; without
        ``on_error`` the exception propagates. Stopping early (an exception, ``close()``)
        cancels the tasks not yet finished.
        """
        expected = package_fingerprint()
        done: queue.Queue[Any] = queue.Queue()
        token = uuid.uuid4().hex[:8]
        name = getattr(fn, "__name__", "task").strip("_")
        index: dict[Any, int] = {}
        for i, args in enumerate(tasks):
            f = self.client.submit(_checked_call, expected, fn, *args, pure=False, key=f"{name}-{token}-{i}")
            index[f] = i
            f.add_done_callback(done.put)  # called from the client's thread
        watch = _Watch(self, set(self.workers))
        try:
            while index:
                try:
                    f = done.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    f = None
                watch.check()
                if f is None or f not in index:
                    continue
                status = f.status
                if status not in ("finished", "error", "cancelled"):
                    f.add_done_callback(done.put)  # lost with its worker after finishing: computed again
                    continue
                i = index.pop(f)
                if status == "cancelled":
                    raise self._lost(watch)
                try:
                    exc = f.exception() if status == "error" else None
                    value = f.result() if status == "finished" else None
                except (OSError, CancelledError, asyncio.CancelledError) as err:  # the scheduler went away
                    raise self._lost(watch) from err
                if exc is None:
                    yield cast("_R", value)
                    continue
                if isinstance(exc, ClusterError):
                    raise ClusterError(str(exc), exc.restart) from exc
                if on_error is None:
                    raise exc
                yield on_error(i, exc)
        finally:
            if index:
                with contextlib.suppress(Exception):  # a client that lost its scheduler cannot cancel
                    self.client.cancel(list(index))

    def _lost(self, watch: _Watch) -> ClusterError:
        """What went wrong when results cannot be had, after reporting every worker lost meanwhile.

        A cancelled task most often means its shared data died with its last holder: it cannot
        be computed again, so Dask drops every task that needs it."""
        left = watch.check(force=True)
        if watch.unreachable:
            return ClusterError(f"lost the Dask scheduler at {self.address}", _START_ALL)
        if not left:
            return ClusterError(f"every Dask worker of {self.address} is gone", _START_WORKERS)
        return ClusterError(
            f"the Dask cluster at {self.address} lost every worker holding the shared training data", _START_WORKERS
        )


class _Watch:
    """Follows the worker list while tasks run: reports losses and arrivals, checks newcomers."""

    def __init__(self, session: DaskSession, seen: set[str]) -> None:
        self.session = session
        self.seen = seen
        self.last = time.monotonic()
        self.empty_since: float | None = None
        self.unreachable = False  # the scheduler did not answer the last look

    def check(self, force: bool = False) -> int:
        """Report changes since the last look (at most one look a second unless ``force``); the workers now."""
        now = time.monotonic()
        if now - self.last < POLL_SECONDS and not force:
            return len(self.seen)
        self.last = now
        s = self.session
        try:
            current = set(s.client.nthreads())
            self.unreachable = False
        except Exception:  # the scheduler itself is gone or unreachable: no news of the workers
            self.unreachable = True
            self.empty_since = self.empty_since or now
            if now - self.empty_since >= s.timeout and not force:
                what = f"lost the Dask scheduler at {s.address} (for {s.timeout:g} s)"
                raise ClusterError(what, _START_ALL) from None
            return 0
        for addr in sorted(self.seen - current):
            s.lost.append(addr)
            _logger.warning(
                "lost Dask worker %s (%d left); its unfinished tasks run again on the others", addr, len(current)
            )
        joined = sorted(current - self.seen)
        if joined:
            _check_workers(s, joined)
            for addr in joined:
                _logger.info("Dask worker %s joined (%s)", addr, s.workers[addr].device)
        self.seen = current
        if current:
            self.empty_since = None
            return len(current)
        self.empty_since = self.empty_since or now
        if now - self.empty_since >= s.timeout and not force:
            raise ClusterError(f"every Dask worker of {s.address} is gone (none for {s.timeout:g} s)", _START_WORKERS)
        return 0


def _check_workers(session: DaskSession, addresses: Sequence[str] | None = None) -> None:
    """Ask workers for their facts; raise one line naming every one that cannot serve this client."""
    client = session.client
    try:
        got = client.run(worker_facts, session.device, workers=addresses, on_error="return")
    except Exception as exc:
        raise ClusterError(f"cannot ask the Dask workers of {session.address} who they are ({_reason(exc)})") from exc
    problems = _problems(got, _client_facts())
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClusterError(f"{problems[0]}{more}: every worker needs the client's nas-proxy and a usable device")
    for addr, f in got.items():
        session.workers[addr] = WorkerFacts(address=addr, **f)


def connect(
    scheduler: Any = None,
    *,
    n_jobs: int = 1,
    device: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DaskSession:
    """A checked :class:`DaskSession`; every problem is one :class:`NasProxyError` line within ``timeout``.

    ``scheduler``: an address (``tcp://host:8786``), a ``distributed.Client`` (used as it is,
    not closed), or None: a LocalCluster of ``n_jobs`` worker processes (-1: one per core), one
    thread each, on 127.0.0.1 without a dashboard. ``n_jobs`` only sizes that local cluster: an
    existing cluster brings its own workers. ``device``: pin every worker to it (checked on each),
    or None: each worker resolves its own.
    """
    _need_distributed()
    from distributed import Client, LocalCluster

    if timeout <= 0:
        raise NasProxyError(f"the cluster timeout must be positive, got {timeout!r}")
    device = None if device in (None, "auto") else device  # auto: each worker's own choice
    if scheduler is not None and n_jobs != 1:
        raise NasProxyError(
            "--n-jobs sizes a local cluster; a Dask scheduler brings its own workers (leave --n-jobs out)"
        )
    if isinstance(scheduler, Client):
        session = DaskSession(scheduler, str(scheduler.scheduler_info()["address"]), False, device, timeout)
    elif scheduler:
        address = check_address(str(scheduler), timeout)
        try:
            client = Client(address, timeout=f"{timeout}s", set_as_default=False)  # type: ignore[no-untyped-call]
        except Exception as exc:  # a Dask worker's port, a refused TLS handshake, ...
            raise NasProxyError(
                f"{address} speaks Dask but did not take a client ({_reason(exc)}); give the scheduler's address"
            ) from exc
        session = DaskSession(client, address, True, device, timeout)
    else:
        workers = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR,
        )
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        session = DaskSession(client, cluster.scheduler_address, True, device, timeout, local=True)
    try:
        try:
            session.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise NasProxyError(
                f"no Dask worker joined {session.address} within {timeout:g} s; start some with "
                f"`dask worker {session.address}`"
            ) from exc
        _check_workers(session)
    except BaseException:
        session.close()
        raise
    devices = ", ".join(f"{n} {d}" for d, n in _tally(session.devices.values()))
    _logger.info("Dask cluster %s: %d workers (%s)", session.address, len(session.workers), devices)
    return session


def _tally(values: Any) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items())


__all__ = [
    "DEFAULT_TIMEOUT",
    "ClusterError",
    "DaskSession",
    "WorkerFacts",
    "check_address",
    "connect",
    "package_fingerprint",
    "parse_address",
    "source_digest",
    "worker_facts",
]
