"""The results store: append-only rows that survive kills, torn lines, resume keys, the protocol."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from nas_proxy.errors import NasProxyError
from nas_proxy.store import RUN_COLUMNS, ResultsStore, RunRow, ScoreRow, open_store


def _row(arch: str = "ConvNet-D1-W4-AR-IN-AP", seed: int = 0, status: str = "ok", acc: float = 0.5) -> RunRow:
    return RunRow(
        arch,
        "full",
        seed,
        "abc123",
        status,
        acc if status == "ok" else float("nan"),
        1.5,
        10,
        100,
        "" if status == "ok" else "why",
        "synthetic",
        "2024-01-01T00:00:00.000+00:00",
        "2024-01-01T00:00:02.000+00:00",
    )


def test_rows_round_trip_with_nan_accuracy(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "run")
    rows = [_row(seed=0), _row(seed=1, status="diverged"), _row(seed=2, status="failed")]
    for r in rows:
        store.append(r)
    back = store.rows()
    assert [r.key for r in back] == [r.key for r in rows]
    assert back[0] == rows[0]
    assert math.isnan(back[1].accuracy) and back[1].status == "diverged"
    assert "NaN" not in store.runs_path.read_text()  # strict JSON: null, not NaN
    assert store.done_keys() == {r.key for r in rows}


def test_frame_has_typed_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    assert list(store.frame().columns) == list(RUN_COLUMNS)  # empty store: header only
    store.append_many([_row(seed=0, acc=0.25), _row(seed=1, acc=0.75)])
    frame = store.frame()
    assert list(frame.columns) == list(RUN_COLUMNS)
    assert frame["accuracy"].tolist() == [0.25, 0.75]
    assert str(frame["seed"].dtype) == "int64"


def test_torn_last_line_is_skipped_with_a_warning_then_cut(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append_many([_row(seed=0), _row(seed=1)])
    with open(store.runs_path, "ab") as f:  # a kill in the middle of a write
        f.write(_row(seed=2).to_json().encode()[:37])
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert len(ResultsStore(tmp_path).rows()) == 2
    writer = ResultsStore(tmp_path)
    with pytest.warns(RuntimeWarning, match="cutting a torn last line"):
        writer.append(_row(seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file is clean again
        assert [r.seed for r in writer.rows()] == [0, 1, 3]


def test_malformed_middle_line_is_skipped(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(_row(seed=0))
    with open(store.runs_path, "a") as f:
        f.write("{not json\n")
    store.append(_row(seed=1))
    with pytest.warns(RuntimeWarning, match="malformed line"):
        assert [r.seed for r in store.rows()] == [0, 1]


def test_first_row_of_a_key_wins(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append_many([_row(acc=0.1), _row(acc=0.9)])
    assert [r.accuracy for r in store.rows()] == [0.1]


def test_bad_status_is_refused() -> None:
    with pytest.raises(NasProxyError, match="status"):
        _row(status="weird")
    with pytest.raises(NasProxyError, match="status"):
        ScoreRow("synflow", "x", 0, "diverged", 1.0, 0.0)


def test_scores_round_trip(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append_scores(
        [ScoreRow("synflow", "a", 0, "ok", 3.5, 0.1), ScoreRow("naswot", "a", 0, "overflow", float("inf"), 0.2, "inf")]
    )
    frame = store.scores_frame()
    assert frame["ranker"].tolist() == ["synflow", "naswot"]
    assert frame["score"].iloc[0] == 3.5 and math.isnan(frame["score"].iloc[1])


def test_protocol_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "run")
    assert store.read_protocol() is None
    store.write_protocol({"dataset": "synthetic", "configs": {}})
    assert store.read_protocol() == {"dataset": "synthetic", "configs": {}}
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_open_store_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(NasProxyError, match="does not exist"):
        open_store(tmp_path / "nope")
    with pytest.raises(NasProxyError, match="not a run directory"):
        open_store(tmp_path)
    (tmp_path / "protocol.json").write_text("[1, 2]")
    with pytest.raises(NasProxyError, match="JSON object"):
        open_store(tmp_path).read_protocol()


def test_learning_curves_round_trip_and_old_rows_load_without_one(tmp_path: Path) -> None:
    import json

    store = ResultsStore(tmp_path)
    curve = (
        {"step": 5, "epoch": 1.0, "accuracy": 0.5, "loss": 1.2},
        {"step": 10, "epoch": 2.0, "accuracy": None, "loss": None},
    )
    store.append(RunRow("ConvNet-D1-W4-AR-IN-AP", "full", 0, "h", "ok", 0.7, 1.0, 10, 100, curve=curve))
    # A row written before curves existed has no "curve" key at all.
    old = {
        "arch_id": "ConvNet-D1-W8-AR-IN-AP",
        "source_id": "full",
        "seed": 0,
        "config_hash": "h",
        "status": "ok",
        "accuracy": 0.8,
        "seconds": 1.0,
        "steps": 10,
        "params": 100,
    }
    with open(store.runs_path, "a") as f:
        f.write(json.dumps(old) + "\n")
    rows = {r.arch_id: r for r in store.rows()}
    assert rows["ConvNet-D1-W4-AR-IN-AP"].curve == curve
    assert rows["ConvNet-D1-W8-AR-IN-AP"].curve == ()
    assert "curve" not in json.loads(RunRow("a", "s", 0, "h", "ok", 0.1, 1.0, 1, 1).to_json())  # unchanged format
    # A malformed curve is a bad row: skipped with a warning, like any other bad field.
    bad = {**old, "arch_id": "ConvNet-D2-W4-AR-IN-AP", "curve": [{"accuracy": 0.3}]}
    with open(store.runs_path, "a") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.warns(RuntimeWarning, match="bad fields"):
        assert len(store.rows()) == 2
