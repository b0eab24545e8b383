"""benchmarks/gpu_check.py at dry-run sizes on the CPU: the GPU check cannot rot between lent devices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def gpu_check():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_dry_run_runs_every_stage_and_writes_its_record(gpu_check, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert gpu_check.main(["--dry-run", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (record,) = tmp_path.glob("gpu_check-*-dry-run.json")
    data = json.loads(record.read_text())
    assert data["dry_run"] is True
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == ["sweep", "check", "dc"]
    assert stages["sweep"]["figures"]["candidates"] == 16 and stages["sweep"]["figures"]["failed"] == 0
    assert stages["check"]["figures"]["compared"] == 3
    assert stages["dc"]["figures"]["equal"] is True and stages["dc"]["figures"]["ratio"] > 0
    assert record.with_suffix(".md").read_text().startswith("# gpu_check")


def test_without_a_gpu_it_says_so_in_one_line(gpu_check, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no GPU here") and "--dry-run" in err and "\n" not in err
    assert gpu_check.main(["--dry-run", "--device", "cpu", "--skip", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown stage 'nope'; valid: sweep, check, dc" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
