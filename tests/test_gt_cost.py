"""benchmarks/gt_cost.py on a tiny stored ground truth: it retimes every whole-data row and writes its record."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from nas_proxy.cli import main

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def gt_cost() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gt_cost

        yield gt_cost
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_whole_data_row_gets_a_prediction(gt_cost: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["evaluate", "--space", "tiny", "--filter", "ConvNet-D1-W4-A?-IN-AP", "--dataset", "synthetic"]
    assert main([*argv, "--full", "--full-epochs", "1", "--seeds", "0", "1", "--no-progress", "--out", str(run)]) == 0
    out = tmp_path / "cost"
    assert gt_cost.main([str(run), "--steps", "2", "--warmup", "1", "--n-jobs", "1", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    rows = record["rows"]
    assert {(r["arch_id"], r["seed"]) for r in rows} == {
        (a, s) for a in ("ConvNet-D1-W4-AR-IN-AP", "ConvNet-D1-W4-AS-IN-AP") for s in (0, 1)
    }
    for r in rows:  # the prediction is the quiet seconds per step times the run's steps
        assert r["s_per_step"] > 0 and r["predicted_s"] == pytest.approx(r["s_per_step"] * r["steps"])
    assert record["summary"]["rows"] == 4
    assert out.with_suffix(".md").read_text().startswith("# Ground-truth cost")


def test_a_run_without_whole_data_rows_is_refused(
    gt_cost: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gt_cost.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert "no whole-data config" in capsys.readouterr().err
