"""One writer at a time: an exclusive lock on a run directory (or any output), held by a live process.

Two ``evaluate`` processes on one ``--out`` used to train every run twice and leave 48 rows for
24 keys, one invocation record without its ``finished``. Now the second is refused at once, with
one line naming the process that holds the directory.

The lock is ``flock`` on a small file that records the holder (pid, host, command, start time).
The kernel drops an ``flock`` when its process dies, kill -9 included, so a killed writer never
blocks the next one: its file is still there (a clean exit removes it), and the next writer
takes it over with a note naming the process that died. POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from nas_proxy.errors import InUseError, NasProxyError
from nas_proxy.log import note

LOCK_NAME = ".nas-proxy.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock: enough for a person to find the process."""

    pid: int
    host: str
    command: str
    since: str

    @classmethod
    def me(cls) -> Holder:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        return cls(os.getpid(), platform.node(), command[:200], datetime.now(UTC).isoformat(timespec="seconds"))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command}, since {self.since})"


def _read_holder(fd: int) -> Holder | None:
    """The holder recorded in an open lock file, or None (empty, or not ours to parse)."""
    try:
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return None
        data = json.loads(raw)
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _in_use(fd: int, what: str, fix: str) -> InUseError:
    holder = _read_holder(fd)
    who = holder.describe() if holder is not None else "another process (it is just starting)"
    return InUseError(f"{what} is in use by {who}; {fix}")


def check_free(path: str | Path, what: str, fix: str) -> None:
    """Raise :class:`InUseError` now if a live process holds ``path``; takes nothing, creates nothing.

    For failing at once, before minutes of loading data, when the real :func:`exclusive` comes
    later (it still decides: two processes may pass this check together).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or none readable): nothing to report now, exclusive() will tell
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with a holder's exclusive lock
        except BlockingIOError:
            raise _in_use(fd, what, fix) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_locked(path: Path, what: str, fix: str) -> int:
    """An fd of ``path`` holding its exclusive flock, or InUseError naming the live holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _in_use(fd, what, fix)
            os.close(fd)
            raise error from None
        except BaseException:
            os.close(fd)
            raise
        # A holder that finished between our open and flock removed the file: we locked a file
        # no one else will open. Lock the one at the path now instead.
        try:
            here, there = os.fstat(fd), os.stat(path)
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def exclusive(path: str | Path, what: str, fix: str) -> Iterator[Holder | None]:
    """Hold the lock file ``path`` for the block; yields the holder that died holding it, if any.

    ``what`` names the locked thing and ``fix`` says what to do, in the one-line error that a
    second process gets (:class:`InUseError`). The file is removed when the block ends, even by
    an exception; a kill leaves it, and the next ``exclusive`` takes it over with a :class:`Note`.
    Not re-entrant: a second ``exclusive`` on the same path in the same process is refused too.
    """
    path = Path(path)
    try:
        fd = _open_locked(path, what, fix)
    except OSError as exc:
        raise NasProxyError(f"cannot lock {what} ({exc.strerror or exc}: {path})") from exc
    try:
        stale = _read_holder(fd)
        if stale is not None:
            note(f"{what}: taking over from {stale.describe()}, which ended without finishing")
        blob = json.dumps(asdict(Holder.me())).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, blob, 0)
        os.fsync(fd)
        yield stale
    finally:
        # Remove while still holding it, so no one can lock the file after we let go of it.
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing drops the flock
