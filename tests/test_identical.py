"""The evaluator's stored rows are bit-identical to the reference made before issue 18's refactor.

Float results depend on the CPU and the torch build, so this runs only on the host that made the
reference (``scripts/check_identical.py`` records both); elsewhere the script itself compares
against a reference made there (``--write`` before a change, then without).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_identical.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_identical", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_identical"] = module
    spec.loader.exec_module(module)
    return module


def test_rows_are_identical_to_the_reference_on_its_host(check: ModuleType, tmp_path: Path) -> None:
    reference = json.loads(check.REFERENCE.read_text())
    if reference["host"] != check.host():
        pytest.skip(f"reference made on another CPU or torch build ({reference['host']}): floats may differ")
    for variant in ("auto", "groups"):  # in this process; the script also runs stacked seeds and workers
        n, diffs = check.compare(reference["variants"][variant], check.run(variant, tmp_path / variant))
        assert n == len(reference["variants"][variant]) and diffs == [], variant


def test_the_comparison_sees_every_field_but_timing(check: ModuleType) -> None:
    row = {"arch_id": "a", "source_id": "s", "seed": 0, "accuracy": 0.5, "curve": [{"loss": 1.0}]}
    assert check.compare([row], [dict(row)]) == (1, [])
    n, diffs = check.compare([row], [{**row, "curve": [{"loss": 1.0000001}]}])
    assert n == 1 and len(diffs) == 1 and "curve" in diffs[0]
    assert "seconds" in check.TIMING and "accuracy" not in check.TIMING
