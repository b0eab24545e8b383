"""Progress outside a terminal: plain timestamped lines at the start, on a timer and at the end."""

from __future__ import annotations

import io
import re
import time
import warnings

import pytest

from nas_proxy.data import Split
from nas_proxy.log import (
    LineProgress,
    Note,
    debug_enabled,
    duration,
    log_every,
    note,
    plain_warnings,
    progress_bar,
    rate,
)
from nas_proxy.proxies import get_builder

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_at_start_on_the_timer_and_at_the_end() -> None:
    out = io.StringIO()
    with LineProgress(10, "build dc", "it", every=0.05, stream=out) as bar:
        for _ in range(4):
            bar.update(1)
        bar.set_postfix(loss="0.1234")
        time.sleep(0.2)  # one step that takes long: the timer keeps the log alive
    lines = out.getvalue().splitlines()
    assert re.fullmatch(rf"{STAMP} build dc: started, 0/10 it", lines[0])
    periodic = [line for line in lines[1:-1] if "4/10 it (40%)" in line]
    assert periodic, lines
    assert all(re.search(r" it/(s|min|h), eta \S+, elapsed \S+, loss=0.1234$", line) for line in periodic)
    assert re.fullmatch(rf"{STAMP} build dc: stopped at 4/10 it in \d+s \(.* it/(s|min|h)\)", lines[-1])


def test_a_finished_bar_says_done_and_a_resumed_one_says_where_it_resumed() -> None:
    out = io.StringIO()
    bar = LineProgress(5, "embed", "step", initial=2, every=60, stream=out)
    bar.update(3)
    bar.close()
    bar.close()  # closing twice prints once
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("embed: started, 2/5 step (resuming at 2)")
    assert len(lines) == 2 and " embed: done 5/5 step in " in lines[1]


def test_disabled_progress_is_silent_and_a_terminal_gets_tqdm() -> None:
    out = io.StringIO()
    with progress_bar(3, "quiet", enabled=False, stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == "" and bar.n == 3
    tty = FakeTerminal()
    with progress_bar(3, "bar", enabled=True, stream=tty) as bar:
        bar.update(3)
    assert not isinstance(bar, LineProgress) and "3/3" in tty.getvalue()


def test_rate_and_duration_read_well() -> None:
    assert rate(10, 4, "it") == "2.5 it/s"
    assert rate(3, 60, "run") == "3 run/min"
    assert rate(1, 7200, "run") == "0.5 run/h"
    assert rate(5000, 1, "it") == "5000 it/s"
    assert rate(0, 10, "it") == "0 it/s"
    assert (duration(42), duration(429), duration(11100)) == ("42s", "7m09s", "3h05m")


def test_log_every_and_debug_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_PROXY_LOG_EVERY", "5")
    assert log_every() == 5
    for bad in ("-1", "nan", "soon"):
        monkeypatch.setenv("NAS_PROXY_LOG_EVERY", bad)
        assert log_every() == 60
    monkeypatch.delenv("NAS_PROXY_DEBUG", raising=False)
    assert not debug_enabled() and debug_enabled(True)
    monkeypatch.setenv("NAS_PROXY_DEBUG", "1")
    assert debug_enabled()
    monkeypatch.setenv("NAS_PROXY_DEBUG", "0")
    assert not debug_enabled()


def test_plain_warnings_are_one_line_each() -> None:
    out = io.StringIO()
    with plain_warnings(out):
        warnings.simplefilter("always")
        note("an old file,\nloaded as it is")
        warnings.warn("something odd", RuntimeWarning, stacklevel=1)
    assert out.getvalue().splitlines() == ["note: an old file, loaded as it is", "warning: something odd"]
    with pytest.warns(Note):
        note("library users see a warning they can filter")


def test_a_build_outside_a_terminal_logs_lines(
    tiny_data: tuple[Split, Split], capsys: pytest.CaptureFixture[str]
) -> None:
    # capsys' stderr is no terminal: a batch job's log.
    train, _ = tiny_data
    get_builder("dm", ipc=1, iterations=3, batch_real=8).build(train, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"{STAMP} build dm: started, 0/3 it", err[0])
    assert re.fullmatch(rf"{STAMP} build dm: done 3/3 it in \d+s \(.*\)", err[-1])
