"""`nas-proxy search`: a study end to end on tiny synthetic data, continuation, Ctrl-C, bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from nas_proxy import search
from nas_proxy.cli import main
from nas_proxy.data import make_synthetic
from nas_proxy.proxies import get_builder, save_proxy
from nas_proxy.space import load_space


@pytest.fixture
def proxy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Built from load_dataset("synthetic")'s training split, so the CLI finds its test split.
    monkeypatch.chdir(tmp_path)
    train, _ = make_synthetic()
    return save_proxy(get_builder("random", ipc=2, seed=0).build(train), tmp_path / "p.npz")


def _search(proxy: Path, *extra: str) -> list[str]:
    return ["search", "--space", "tiny", "--proxy", str(proxy), "--epochs", "1", "--no-progress", *extra]


def _journal(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "results" / "studies").glob("*.log"))


def test_search_runs_continues_and_refits(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_search(proxy_file, "--n-trials", "3")) == 0
    out = capsys.readouterr().out
    assert "sampler tpe, pruner median, 3 trials (0 done before)" in out
    assert "| # | trial | arch_id | proxy acc % | params |" in out
    (journal,) = _journal(tmp_path)
    # The same command with a larger budget continues the same study (a journal file by default).
    gt = tmp_path / "gt.csv"
    rows = "".join(f"{s.id},0,{i / 100}\n" for i, s in enumerate(load_space("tiny")))
    gt.write_text("arch_id,seed,accuracy\n" + rows)
    args = _search(proxy_file, "--n-trials", "4", "--refit-top", "1", "--refit-subset", "40", "--ground-truth", str(gt))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 trials (3 done before)" in out
    assert "refit:    top 1 on 40 training images, 1 epochs" in out
    assert "whole-data acc % (refit)" in out and "rank of 16" in out
    assert _journal(tmp_path) == [journal]
    storage = search.default_storage(journal)
    study = optuna.load_study(study_name=journal.stem, storage=storage)
    assert search.counted_trials(study) == 4


def test_search_nsga2_and_grid(proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(_search(proxy_file, "--n-trials", "3", "--sampler", "nsga2", "--storage", url)) == 0
    assert "sampler nsga2, pruner none" in capsys.readouterr().out
    assert main(_search(proxy_file, "--n-trials", "40", "--sampler", "grid", "--pruner", "none")) == 0
    assert "16 complete" in capsys.readouterr().out  # the grid sampler stops after all 16 candidates


def test_ctrl_c_keeps_finished_trials(
    proxy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = search.make_objective

    def interrupted_after_two(*args: Any, **kwargs: Any) -> Callable[[optuna.Trial], Any]:
        objective = real(*args, **kwargs)

        def wrapped(trial: optuna.Trial) -> Any:
            if trial.number == 2:
                raise KeyboardInterrupt
            return objective(trial)

        return wrapped

    monkeypatch.setattr(search, "make_objective", interrupted_after_two)
    assert main(_search(proxy_file, "--n-trials", "5", "--pruner", "none")) == 130
    captured = capsys.readouterr()
    assert "2 complete, 1 fail" in captured.out
    assert "rerun the same command" in captured.err
    monkeypatch.setattr(search, "make_objective", real)
    assert main(_search(proxy_file, "--n-trials", "5", "--pruner", "none")) == 0
    assert "5 trials (2 done before)" in capsys.readouterr().out
    (journal,) = _journal(tmp_path)
    study = optuna.load_study(study_name=journal.stem, storage=search.default_storage(journal))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 5 and states.count(TrialState.FAIL) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "bogus"], "unknown sampler 'bogus'; valid: tpe, random, grid, nsga2"),
        (["--pruner", "bogus"], "unknown pruner 'bogus'; valid: median, hyperband, none"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot open storage 'postgresql://nobody@127.0.0.1:1/x'"),
        (["--dataset", "fashionmnist"], "proxy from another dataset"),
        (["--sampler", "nsga2", "--pruner", "median"], "cannot prune multi-objective"),
        (["--n-jobs", "0"], "--n-jobs must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    proxy_file: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(_search(proxy_file, "--n-trials", "2", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_missing_proxy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_search(tmp_path / "nope.npz", "--n-trials", "2")) == 2
    assert "does not exist" in capsys.readouterr().err
