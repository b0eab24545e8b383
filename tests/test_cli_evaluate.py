"""`nas-proxy evaluate / runs / report / ground-truth`: end to end on synthetic data, and bad input exits 2."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from nas_proxy.cli import main
from nas_proxy.data import load_dataset
from nas_proxy.proxies import get_builder, save_proxy
from nas_proxy.store import RUN_COLUMNS

BASE = [
    "evaluate",
    "--space",
    "tiny",
    "--filter",
    "ConvNet-D1-W4-*",
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--no-progress",
]


@pytest.fixture
def proxy_file(tmp_path: Path) -> Path:
    train, _ = load_dataset("synthetic")
    return save_proxy(get_builder("random", ipc=2, seed=0).build(train), tmp_path / "random.npz")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


def test_evaluate_runs_report_end_to_end(proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [*BASE, "--proxy", str(proxy_file), "--full", "--early-stopping", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "12 planned, 0 already stored, 12 trained now" in text

    assert main(argv) == 0  # a rerun trains nothing
    assert "12 already stored, 0 trained now" in capsys.readouterr().out

    assert main(["runs", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == list(RUN_COLUMNS) and len(rows) == 13

    assert main(["report", str(out), "--bootstrap", "50"]) == 0
    md = capsys.readouterr().out
    assert "| Performance (%) |" in md and "random ipc2" in md and "whole data" in md
    assert (out / "report" / "report.csv").exists() and (out / "report" / "correlation_vs_cost.png").exists()

    gt = tmp_path / "gt.csv"
    assert main(["ground-truth", str(out), "--out", str(gt)]) == 0
    capsys.readouterr()
    assert main([*BASE, "--proxy", str(proxy_file), "--ground-truth", str(gt), "--out", str(tmp_path / "reuse")]) == 0
    text = capsys.readouterr().out
    assert "imported: 4 whole-data rows" in text and "4 trained now" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--full", "--space", "nope"], "unknown search space 'nope'"),
        (["--proxy", "missing.npz"], "proxy file 'missing.npz' does not exist"),
        (["--n-jobs", "0"], "--n-jobs must be a positive integer"),
        (["--full", "--seeds", "0", "0"], "training seeds repeat"),
        (["--early-stopping", "--full"], "--early-stopping trains as many steps as a proxy run"),
        ([], "nothing to evaluate"),
        (["--full", "--rankers", "bogus"], "unknown ranker 'bogus'"),
        (["--full", "--scheduler", "tcp://x:1"], "--scheduler needs --backend dask"),
        (["--ground-truth", "nope.csv"], "ground-truth file 'nope.csv' does not exist"),
        (["--full", "--full-curve", "1,soon"], "bad curve point 'soon'; valid: epochs (4), steps (100s)"),
        (["--full", "--full-curve", "3"], "curve epoch 3 is past the run's 1 epochs"),
        (
            ["--full", "--full-epochs", "4", "--full-curve", "1,2", "--fidelity", "3"],
            "--fidelity 3 is not recorded: whole-data runs record epochs 1, 2, 4",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*BASE, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_proxy_from_another_dataset_exits_2(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["evaluate", "--space", "tiny", "--dataset", "fashionmnist", "--proxy", str(proxy_file), "--out", str(out)]
    assert main(argv) == 2
    assert "was built from 'synthetic', not --dataset 'fashionmnist'" in capsys.readouterr().err
    assert not out.exists()


def test_store_from_another_protocol_exits_2_untouched(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*BASE, "--full", "--out", str(out)]) == 0
    before = _snapshot(out)
    argv = [*BASE, "--full", "--full-epochs", "2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another protocol (epochs 1 -> 2)" in err
    assert _snapshot(out) == before


def test_runs_and_report_on_a_missing_directory_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", str(tmp_path / "none")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "is not a run directory" in err


def test_batch_candidates_from_the_command_line(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [*BASE, "--proxy", str(proxy_file), "--seeds", "0", "1", "--batch-candidates", "yes", "--out", str(out)]
    assert main(argv) == 0
    assert "8 planned, 0 already stored, 8 trained now (8 ok" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse's own check of the choices
        main([*BASE, "--proxy", str(proxy_file), "--batch-candidates", "maybe", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--batch-candidates" in err and "\n" not in err


def test_unknown_fast_option_exits_2_naming_the_valid_ones(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main([*BASE, "--proxy", str(proxy_file), "--fast-options", "bf16,warp", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown fast option 'warp'") and "channels_last" in err and "\n" not in err
    assert not out.exists()


def test_report_fidelity_and_min_topk_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert (
        main([*BASE, "--full", "--full-epochs", "2", "--full-curve", "1", "--seeds", "0", "1", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    assert main(["report", str(out), "--fidelity", "1", "--bootstrap", "10", "--no-figures"]) == 0
    assert "whole-data accuracy at **epoch 1**" in capsys.readouterr().out
    assert main(["report", str(out), "--fidelity", "5", "--no-figures"]) == 2
    assert "no curve point at epoch 5; valid: 1" in capsys.readouterr().err
    assert main(["report", str(out), "--min-topk", "0", "--no-figures"]) == 2
    assert "--min-topk must be at least 1" in capsys.readouterr().err
    assert main(["ground-truth", str(out), "--out", str(tmp_path / "gt.csv"), "--fidelity", "3"]) == 2
    assert "no whole-data fidelity of 3 epochs; valid: 1, 2" in capsys.readouterr().err
