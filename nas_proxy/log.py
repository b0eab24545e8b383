"""What long work says while it runs: a bar at a terminal, plain timestamped lines elsewhere.

A person at a terminal gets tqdm's bar. A batch job, a CI log or ``> log 2>&1`` gets what batch
tools print instead: a line when a stage starts, one at least every ``NAS_PROXY_LOG_EVERY``
seconds (default 60) with how far it is, the rate and the time left, and one when it ends.
Silence (tqdm turns itself off outside a terminal) looked like a hang: a default herding build
once wrote an empty log for 40 minutes while it trained its embedding net.

Also here: :class:`Note` (something to know that is not an error; the CLI prints ``note: ...``)
and how the CLI shows warnings and decides on tracebacks (``--debug``, ``NAS_PROXY_DEBUG=1``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Protocol, TextIO

from nas_proxy.errors import one_line

LOG_EVERY_ENV = "NAS_PROXY_LOG_EVERY"
DEBUG_ENV = "NAS_PROXY_DEBUG"
DEFAULT_LOG_EVERY_S = 60.0


class Note(UserWarning):
    """Something the user should know that is not an error (e.g. an old file loaded as it is)."""


def note(message: str) -> None:
    """Issue ``message`` as a :class:`Note` (a warning: library users filter it the usual way)."""
    warnings.warn(message, Note, stacklevel=2)


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` given, or ``NAS_PROXY_DEBUG`` set to anything but empty, 0, false or no."""
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def log_every() -> float:
    """Seconds between progress lines outside a terminal (``NAS_PROXY_LOG_EVERY``, default 60)."""
    text = os.environ.get(LOG_EVERY_ENV, "")
    try:
        value = float(text) if text else DEFAULT_LOG_EVERY_S
    except ValueError:
        value = DEFAULT_LOG_EVERY_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_LOG_EVERY_S


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream is no terminal
        return False


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def stage(message: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
    """One timestamped line saying what starts now, outside a terminal only (a bar says it there)."""
    stream = stream if stream is not None else sys.stderr
    if enabled and not is_terminal(stream):
        print(f"{_stamp()} {message}", file=stream, flush=True)


# ----------------------------------------------------------------------------- progress


class Progress(Protocol):
    """What the loops use of a tqdm bar; :class:`LineProgress` offers the same outside a terminal."""

    n: Any

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def refresh(self) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any: ...


def duration(seconds: float) -> str:
    """``42s``, ``7m09s``, ``3h05m``: short and unambiguous in a log line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate(count: float, seconds: float, unit: str) -> str:
    """``2.31 it/s``, ``4.0 run/min`` or ``1.5 run/h``: the unit of time that keeps the number readable."""
    if count <= 0 or seconds <= 0:
        return f"0 {unit}/s"
    per_s = count / seconds
    value, per = (per_s, "s") if per_s >= 1 else (per_s * 60, "min") if per_s * 60 >= 1 else (per_s * 3600, "h")
    return f"{value:.3g} {unit}/{per}" if value < 1000 else f"{value:.0f} {unit}/{per}"


class LineProgress:
    """tqdm's interface, printing plain lines: at the start, every ``every`` seconds, at the end.

    The periodic line comes from a timer thread, so it keeps coming while one step takes an
    hour (a whole-data training run): a log that goes quiet means the process is gone.
    ``quiet`` keeps the counters and prints nothing (progress switched off).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        every: float | None = None,
        stream: TextIO | None = None,
        quiet: bool = False,
    ) -> None:
        self.n: Any = initial
        self.total = total
        self.desc = desc
        self.unit = unit
        self._initial = initial
        self._postfix = ""
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._start = time.monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if quiet:
            return
        resumed = f" (resuming at {initial})" if initial else ""
        self._line(f"started, {self._of()} {unit}{resumed}")
        self._thread = threading.Thread(target=self._tick, args=(every or log_every(),), daemon=True)
        self._thread.start()

    def _of(self) -> str:
        return f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"

    def _line(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not end the work it reports on
            print(f"{_stamp()} {self.desc}: {text}", file=self._stream, flush=True)

    def status(self) -> str:
        """How far, how fast, how long still: the text of a periodic line."""
        elapsed = time.monotonic() - self._start
        done = self.n - self._initial
        parts = [f"{self._of()} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(rate(done, elapsed, self.unit))
        if self.total is not None and done > 0:
            parts.append(f"eta {duration((self.total - self.n) * elapsed / done)}")
        parts.append(f"elapsed {duration(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            self._line(self.status())

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def refresh(self) -> None:
        """Nothing to redraw: lines come on the timer."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self._quiet:
            elapsed = time.monotonic() - self._start
            finished = self.total is None or self.n >= self.total
            what = "done" if finished else "stopped at"
            self._line(f"{what} {self._of()} {self.unit} in {duration(elapsed)} "
                       f"({rate(self.n - self._initial, elapsed, self.unit)})")

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool,
    initial: int = 0,
    leave: bool = True,
    stream: TextIO | None = None,
) -> Progress:
    """A tqdm bar at a terminal, :class:`LineProgress` lines elsewhere, nothing when not ``enabled``."""
    stream = stream if stream is not None else sys.stderr
    if enabled and is_terminal(stream):
        # Here, not at the top: the CLI imports this module for `--help`, which stays free of
        # tqdm's import; only a terminal's bar needs it.
        from tqdm.auto import tqdm

        bar: Progress = tqdm(
            total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream
        )
        return bar
    return LineProgress(total, desc, unit, initial=initial, stream=stream, quiet=not enabled)


# ----------------------------------------------------------------------------- the CLI's warnings


@contextlib.contextmanager
def plain_warnings(stream: TextIO | None = None) -> Iterator[None]:
    """Within the block, each warning is one line: ``note: ...`` for a :class:`Note`, else ``warning: ...``.

    Python's default shows the file, line number and source line of the ``warnings.warn`` call:
    noise for a user, who needs only the message (a traceback is ``--debug``'s job).
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        prefix = "note" if issubclass(category, Note) else "warning"
        print(f"{prefix}: {one_line(str(message))}", file=stream if stream is not None else sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
