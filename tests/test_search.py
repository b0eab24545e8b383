"""Optuna studies over proxy sets: suggest_arch, the objective, samplers/pruners, storage."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from nas_proxy.data import Split, make_synthetic
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.models import build_model
from nas_proxy.proxies import ProxySet, get_builder, save_proxy
from nas_proxy.search import (
    Diverged,
    best_table,
    best_trials,
    counted_trials,
    create_study,
    default_storage,
    get_pruner,
    get_sampler,
    list_pruners,
    list_samplers,
    make_objective,
    open_storage,
    read_ground_truth,
    refit,
    stop_after,
    suggest_arch,
    trial_arch,
)
from nas_proxy.space import ArchSpec, SearchSpace, load_space
from nas_proxy.train import TrainConfig, accuracy, train_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

ARCH: dict[str, Any] = {"depth": 1, "width": 4, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    # 4 classes of 16x16 images: a trial trains in milliseconds.
    return make_synthetic(num_classes=4, train_per_class=20, test_per_class=10, size=16, seed=0)


@pytest.fixture(scope="module")
def proxy(data: tuple[Split, Split]) -> ProxySet:
    return get_builder("random", ipc=5, seed=0).build(data[0])


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space("tiny")


def test_suggest_arch_one_categorical_per_axis(space: SearchSpace) -> None:
    trial = optuna.trial.FixedTrial(ARCH)
    spec = suggest_arch(trial, space)
    assert spec == ArchSpec(**ARCH)
    assert trial.user_attrs["arch_id"] == spec.id

    study = optuna.create_study()
    study.optimize(lambda t: float(suggest_arch(t, space).depth), n_trials=3)
    for t in study.trials:
        assert set(t.distributions) == {axis for axis, _ in space.axes}
        assert trial_arch(t).id == t.user_attrs["arch_id"]
        assert trial_arch(t) in space


def test_objective_deterministic_for_fixed_params_and_seed(
    proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace
) -> None:
    def run() -> tuple[float, dict[int, float]]:
        obj = make_objective(proxy, data[1], space=space, epochs=3, seed=7, report_every=1, device="cpu")
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(ARCH)
        study.optimize(obj, n_trials=1)
        t = study.trials[0]
        assert t.values is not None
        return t.values[0], dict(t.intermediate_values)

    first, second = run(), run()
    assert first == second
    assert set(first[1]) == {1, 2}  # epochs 1 and 2 reported; epoch 3 is the final value
    fixed = make_objective(proxy, data[1], space=space, epochs=3, seed=7, device="cpu")
    assert fixed(optuna.trial.FixedTrial(ARCH)) == first[0]


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_objective_is_the_plain_loop_bit_for_bit(
    norm: str, proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace
) -> None:
    """Trials take the stacked step (a small avg-pooled net on a CPU): same values as the plain loop."""
    arch = {**ARCH, "norm": norm}
    obj = make_objective(proxy, data[1], space=space, epochs=3, seed=7, report_every=1, report_images=None)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(arch)
    study.optimize(obj, n_trials=1)
    seen: dict[int, float] = {}
    model = build_model(ArchSpec(**arch), 1, 16, 4, seed=7)
    train_model(
        model,
        proxy.as_split(),
        TrainConfig(epochs=3),
        7,
        on_epoch=lambda e, net: seen.update({e: accuracy(net, data[1])}),
    )
    trial = study.trials[0]
    assert trial.values == [accuracy(model, data[1])]
    assert trial.intermediate_values == {e: v for e, v in seen.items() if e < 3}


def test_objective_records_user_attrs(proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    study = create_study(space, "random", "none", seed=0)
    study.optimize(make_objective(proxy, data[1], space=space, epochs=2, seed=0), n_trials=2)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        attrs = t.user_attrs
        assert attrs["source_id"] == proxy.id
        assert attrs["status"] == "ok"
        assert attrs["params"] > 0 and attrs["seconds"] >= 0 and attrs["steps"] == 2
        assert 0.0 <= t.values[0] <= 1.0


def test_five_trial_study_with_pruning(proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    obj = make_objective(proxy, data[1], space=space, epochs=4, seed=0, report_every=1)
    study = create_study(space, "tpe", optuna.pruners.MedianPruner(n_startup_trials=1), seed=0)
    study.optimize(obj, n_trials=5)
    assert len(study.trials) == 5
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(t.intermediate_values for t in study.trials if t.user_attrs.get("duplicate_of") is None)
    # A pruner that always prunes: every trial stops at its first report and says so.
    always = create_study(space, "random", optuna.pruners.ThresholdPruner(lower=2.0), seed=0)
    always.optimize(obj, n_trials=3)
    assert [t.state for t in always.trials] == [TrialState.PRUNED] * 3
    assert all(t.user_attrs["status"] == "pruned" and list(t.intermediate_values) == [1] for t in always.trials)


@pytest.mark.parametrize("name", list_samplers())
def test_every_sampler_runs(name: str, proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    multi = name == "nsga2"
    obj = make_objective(proxy, data[1], space=space, epochs=1, seed=0, multi_objective=multi)
    study = create_study(space, name, None if multi else "median", seed=0)
    study.optimize(obj, n_trials=4)
    assert len(study.trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(len(t.values) == (2 if multi else 1) for t in study.trials)
    if multi:
        assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
        assert all(t.values[1] == t.user_attrs["params"] for t in study.trials)
        assert best_trials(study, 2)


@pytest.mark.parametrize("name", list_pruners())
def test_every_pruner_runs(name: str, proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    obj = make_objective(proxy, data[1], space=space, epochs=3, seed=0, report_every=1)
    study = create_study(space, "random", name, seed=0)
    assert isinstance(study.pruner, type(get_pruner(name)))
    study.optimize(obj, n_trials=3)
    assert counted_trials(study) == 3


def test_grid_visits_every_candidate_once(proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    study = create_study(space, "grid", "none", seed=0)
    study.optimize(make_objective(proxy, data[1], space=space, epochs=1, seed=0), n_trials=len(space) + 5)
    ids = [t.user_attrs["arch_id"] for t in study.trials]
    assert sorted(ids) == sorted(s.id for s in space)  # stops by itself when the grid is exhausted


def test_duplicates_reuse_the_stored_value(proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    study = create_study(space, "random", "none", seed=0)
    study.enqueue_trial(ARCH)
    study.enqueue_trial(ARCH)
    study.optimize(make_objective(proxy, data[1], space=space, epochs=2, seed=0), n_trials=2)
    a, b = study.trials
    assert b.user_attrs["duplicate_of"] == a.number and b.values == a.values
    assert b.user_attrs["seconds"] == 0.0


def test_diverged_run_fails_or_scores_zero(data: tuple[Split, Split], space: SearchSpace) -> None:
    train = data[0]
    images = train.images.clone()
    images[0] = math.nan  # a NaN input makes the loss NaN: the trainer reports divergence
    bad = replace(train, images=images)
    cases: tuple[tuple[Diverged, TrialState], ...] = (("fail", TrialState.FAIL), ("zero", TrialState.COMPLETE))
    for policy, state in cases:
        study = create_study(space, "random", "none", seed=0)
        study.optimize(make_objective(bad, data[1], space=space, epochs=1, seed=0, diverged=policy), n_trials=1)
        t = study.trials[0]
        assert t.state == state and t.user_attrs["status"] == "diverged"
        assert policy == "fail" or t.values == [0.0]
        assert counted_trials(study) == 1  # a diverged run used up budget either way


def test_bad_inputs_raise_one_line(proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace) -> None:
    with pytest.raises(UnknownNameError, match="unknown sampler 'bogus'; valid: tpe, random, grid, nsga2"):
        create_study(space, "bogus")
    with pytest.raises(UnknownNameError, match="unknown pruner 'bogus'"):
        create_study(space, "tpe", "bogus")
    with pytest.raises(UnknownNameError, match="sampler"):
        get_sampler("bogus", space, 0)
    with pytest.raises(NasProxyError, match="cannot prune multi-objective"):
        create_study(space, "nsga2", "median")
    with pytest.raises(NasProxyError, match=r"cannot open storage 'postgresql://nobody@127\.0\.0\.1:1/x'"):
        open_storage("postgresql://nobody@127.0.0.1:1/x", "s")
    with pytest.raises(NasProxyError, match=r"\*\*\*"):  # a password never reaches the message
        open_storage("postgresql://me:secret@127.0.0.1:1/x", "s")
    other, _ = make_synthetic(num_classes=3, train_per_class=2, test_per_class=1, size=16)
    with pytest.raises(NasProxyError, match="classes"):
        make_objective(proxy, other, space=space, epochs=1, seed=0)
    with pytest.raises(NasProxyError, match="epochs"):
        make_objective(proxy, data[1], space=space, epochs=0, seed=0)


def test_continued_study_keeps_trials_and_checks_settings(
    tmp_path: Path, proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    obj = make_objective(proxy, data[1], space=space, epochs=1, seed=0)
    attrs = {"source_id": proxy.id, "epochs": 1}
    study = create_study(space, "random", "none", url, "s", 0, user_attrs=attrs)
    study.optimize(obj, n_trials=2)
    again = create_study(space, "random", "none", url, "s", 0, user_attrs=attrs)
    # stop_after counts the study's total: a rerun finishes the budget, never exceeds it.
    again.optimize(obj, n_trials=10, callbacks=[stop_after(3)])
    assert counted_trials(again) == 3
    with pytest.raises(NasProxyError, match="was run with epochs=1, not 5"):
        create_study(space, "random", "none", url, "s", 0, user_attrs={**attrs, "epochs": 5})


def test_two_processes_share_one_journal(tmp_path: Path, proxy: ProxySet) -> None:
    proxy_path = save_proxy(proxy, tmp_path / "p.npz")
    journal = tmp_path / "study.log"
    test_path = tmp_path / "test.pt"
    _, test = make_synthetic(num_classes=4, train_per_class=20, test_per_class=10, size=16, seed=0)
    torch.save({"images": test.images, "labels": test.labels}, test_path)
    worker = textwrap.dedent(
        f"""
        import sys, torch, optuna
        from nas_proxy.data import Split
        from nas_proxy.proxies import load_proxy
        from nas_proxy.search import create_study, default_storage, make_objective
        from nas_proxy.space import load_space
        torch.set_num_threads(1)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t = torch.load({str(test_path)!r})
        test = Split(t["images"], t["labels"], 4, "synthetic", (0.0,), (1.0,))
        space = load_space("tiny")
        study = create_study(space, "random", "median", default_storage({str(journal)!r}), "shared",
                             seed=int(sys.argv[1]))
        study.optimize(make_objective(load_proxy({str(proxy_path)!r}), test, space=space, epochs=2, seed=0),
                       n_trials=4)
        """
    )
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NAS_PROXY_DEVICE": "cpu", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", worker, str(i)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=default_storage(journal))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(8))  # none lost, none duplicated
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_ground_truth_ranks_average_over_seeds(tmp_path: Path) -> None:
    csv = tmp_path / "gt.csv"
    csv.write_text(
        "arch_id,seed,status,accuracy\n"
        "A,0,ok,0.80\nA,1,ok,0.90\n"  # mean 0.85
        "B,0,ok,0.95\nB,1,diverged,\n"  # only the ok row counts
        "C,0,ok,0.10\n"
    )
    gt = read_ground_truth(csv)
    assert gt.accuracy == pytest.approx({"B": 0.95, "A": 0.85, "C": 0.10})
    assert gt.rank == {"B": 1, "A": 2, "C": 3}
    (tmp_path / "bad.csv").write_text("arch,acc\nA,1\n")
    with pytest.raises(NasProxyError, match="missing columns arch_id, accuracy"):
        read_ground_truth(tmp_path / "bad.csv")
    with pytest.raises(NasProxyError, match="does not exist"):
        read_ground_truth(tmp_path / "none.csv")


def test_best_trials_distinct_and_table(
    proxy: ProxySet, data: tuple[Split, Split], space: SearchSpace, tmp_path: Path
) -> None:
    study = create_study(space, "random", "none", seed=0)
    study.enqueue_trial(ARCH)
    study.enqueue_trial(ARCH)
    study.optimize(make_objective(proxy, data[1], space=space, epochs=1, seed=0), n_trials=5)
    top = best_trials(study, 10)
    ids = [trial_arch(t).id for t in top]
    assert len(ids) == len(set(ids))
    assert [t.values[0] for t in top] == sorted((t.values[0] for t in top), reverse=True)
    csv = tmp_path / "gt.csv"
    csv.write_text("arch_id,accuracy\n" + "".join(f"{s.id},{i / 100}\n" for i, s in enumerate(space)))
    refits = refit([trial_arch(top[0])], data[0], data[1], TrainConfig(epochs=1), 0)
    table = best_table(top, ground_truth=read_ground_truth(csv), refits=refits)
    lines = table.splitlines()
    assert len(lines) == 2 + len(top)
    assert "rank of 16" in lines[0] and "refit" in lines[0]
    assert top[0].user_attrs["arch_id"] in lines[2]


def test_default_storage_is_a_journal_file(tmp_path: Path, space: SearchSpace) -> None:
    path = tmp_path / "deep" / "s.log"
    study = create_study(space, "random", "none", default_storage(path), "s")
    study.optimize(lambda t: float(suggest_arch(t, space).width), n_trials=2)
    assert path.is_file() and path.stat().st_size > 0
    assert len(optuna.load_study(study_name="s", storage=default_storage(path)).trials) == 2


def test_run_search_from_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas_proxy.search import SearchStart, run_search

    monkeypatch.chdir(tmp_path)  # the journal goes under results/studies here
    train, _ = make_synthetic()
    proxy = save_proxy(get_builder("random", ipc=2, seed=0).build(train), tmp_path / "p.npz")
    gt = tmp_path / "gt.csv"
    gt.write_text("arch_id,accuracy\n" + "".join(f"{s.id},{i / 100}\n" for i, s in enumerate(load_space("tiny"))))
    seen: list[SearchStart] = []
    res = run_search(space="tiny", proxy=proxy, n_trials=3, sampler="random", epochs=1, refit_top=1,
                     refit_subset=40, ground_truth=gt, progress=False, on_start=seen.append)
    assert len(seen) == 1 and seen[0].done == 0 and seen[0].space.name == "tiny"
    assert res.counts.get("COMPLETE", 0) + res.counts.get("PRUNED", 0) == 3 and not res.interrupted
    assert len(res.refits) == 1 and res.refit_images == 40 and res.ground_truth is not None
    assert "rank of 16" in res.table()
    again = run_search(space="tiny", proxy=proxy, n_trials=4, sampler="random", epochs=1, progress=False)
    assert again.start.done == 3 and again.start.name == seen[0].name
