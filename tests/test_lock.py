"""One writer per run directory: a second is refused at once naming the first; a killed one is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas_proxy.cli import main
from nas_proxy.data import Split
from nas_proxy.errors import InUseError
from nas_proxy.evaluate import evaluate
from nas_proxy.lock import LOCK_NAME, exclusive
from nas_proxy.log import Note
from nas_proxy.sources import full_source
from nas_proxy.store import ResultsStore
from nas_proxy.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from nas_proxy.store import ResultsStore
with ResultsStore(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process holding ``tmp_path/run``, killed (-9) at the end if still alive."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc, out
    proc.kill()
    proc.wait()


def test_a_second_holder_is_refused_naming_the_first_and_the_file_goes_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with exclusive(path, "output x", "try later") as stale:
        assert stale is None and json.loads(path.read_text())["pid"] == os.getpid()
        in_use = pytest.raises(InUseError, match=rf"output x is in use by pid {os.getpid()} on .*; try later")
        with in_use, exclusive(path, "output x", "try later"):
            pass
    assert not path.exists()
    with exclusive(path, "output x", "try later"):  # free again
        pass


def test_second_evaluate_on_one_directory_exits_2_at_once_naming_the_other_process(
    holder: tuple[subprocess.Popen[str], Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, out = holder

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("refused only after loading the data")

    monkeypatch.setattr("nas_proxy.evaluate.load_dataset", no_loading)  # where run_evaluation looks it up
    argv = ["evaluate", "--space", "tiny", "--dataset", "synthetic", "--full", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: run directory {out} is in use by pid {proc.pid} on ")
    assert err.endswith("wait for it or use another --out") and "\n" not in err
    assert not (out / "runs.jsonl").exists()


def test_a_killed_holder_is_taken_over_with_a_note(
    holder: tuple[subprocess.Popen[str], Path], tiny_data: tuple[Split, Split]
) -> None:
    proc, out = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the kill
    train, test = tiny_data
    taken_over = pytest.warns(Note, match=rf"taking over from pid {proc.pid} .* which ended without finishing")
    with taken_over, ResultsStore(out).lock() as stale:
        assert stale is not None and stale.pid == proc.pid
    assert not (out / LOCK_NAME).exists()
    evaluate(["ConvNet-D1-W4-AR-NN-NP"], [full_source(train, TrainConfig(epochs=1))], test, out_dir=out, progress=False)
    protocol = json.loads((out / "protocol.json").read_text())
    assert all("finished" in inv for inv in protocol["invocations"])
    assert not (out / LOCK_NAME).exists()


def test_an_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["evaluate", "--space", "tiny", "--dataset", "synthetic", "--full", "--out", str(blocker / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot create run directory {blocker / 'run'} (Not a directory)")
    assert err.count("\n") == 1
