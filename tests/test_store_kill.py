"""kill -9 while appending to the store, again and again: no finished row lost, none stored twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from nas_proxy.store import RUNS_FILE, ResultsStore

ROOT = Path(__file__).resolve().parents[1]
KEYS = 40

# A writer as evaluate is one: hold the directory, skip stored keys, append each row as it
# "finishes" and say so on stdout only once append() returned (the row is fsynced then).
# With a tear point it dies in the middle of writing that row, as a kill inside write() would
# leave it (random kills rarely land inside the syscall itself).
WRITER = """
import os, signal, sys
from nas_proxy.store import ResultsStore, RunRow

store, keys, points, tear = ResultsStore(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# Large rows (a long learning curve): a write takes long enough for a kill to land inside it.
curve = tuple({"step": j, "epoch": j, "accuracy": 0.5, "loss": 1.0, "pad": "x" * 200} for j in range(points))
with store.lock():
    done = store.done_keys()
    for seed in range(keys):
        row = RunRow("ConvNet-D1-W4-AR-IN-AP", "src", seed, "cfg", "ok", 0.5, 1.0, 1, 1, curve=curve)
        if row.key in done:
            continue
        if tear == 0:
            with open(store.runs_path, "ab") as f:
                f.write(row.to_json().encode()[: len(row.to_json()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        tear -= 1
        store.append(row)
        print(seed, flush=True)
"""


def test_kill_9_while_appending_loses_no_finished_row_and_stores_none_twice(tmp_path: Path) -> None:
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    finished: set[int] = set()
    kills = torn = 0
    for attempt in range(9):
        last = attempt == 8  # the last writer runs to the end
        tear = rng.randint(0, 3) if attempt % 3 == 2 and not last else -1
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(KEYS), "500", str(tear)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert proc.stdout is not None
        wanted = rng.randint(1, 4)
        seen = 0
        while not last and seen < wanted:
            line = proc.stdout.readline()
            if not line:
                break
            finished.add(int(line))
            seen += 1
        if not last and tear < 0 and proc.poll() is None:
            time.sleep(rng.uniform(0, 0.02))  # somewhere inside the next rows' writes
            proc.send_signal(signal.SIGKILL)
            kills += 1
        out, err = proc.communicate(timeout=120)
        finished |= {int(x) for x in out.split()}  # printed before the kill landed
        assert "Traceback" not in err, err
        torn += err.count("cutting a torn last line")
        if proc.returncode == 0:
            break
    assert kills >= 3 and torn >= 2 and proc.returncode == 0

    raw = (tmp_path / RUNS_FILE).read_bytes()
    assert raw.endswith(b"\n")
    keys = [json.loads(line)["seed"] for line in raw.splitlines()]  # every line whole: torn tails were cut
    assert sorted(keys) == list(range(KEYS))  # each key once: none lost, none twice
    assert finished <= set(keys)
    assert len(ResultsStore(tmp_path).rows()) == KEYS
