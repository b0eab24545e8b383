"""The evaluator: resume after an interrupt, diverged/failed candidates, parallel backends, protocol checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nas_proxy import kernels
from nas_proxy.data import Split, make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.evaluate import evaluate
from nas_proxy.groundtruth import export_ground_truth, load_ground_truth
from nas_proxy.metrics import candidate_scores, compare
from nas_proxy.proxies import get_builder
from nas_proxy.report import build_report
from nas_proxy.sources import TrainingSource, early_stopping_sources, full_source, proxy_source
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.store import ResultsStore, RunRow
from nas_proxy.train import RunOutcome, TrainConfig, train_and_evaluate

CFG = TrainConfig(epochs=2, batch_size=16)
RESULT_COLUMNS = ["arch_id", "source_id", "seed", "config_hash", "status", "accuracy", "steps", "params"]


@pytest.fixture
def data() -> tuple[Split, Split]:
    return make_synthetic(num_classes=4, train_per_class=16, test_per_class=8, size=12, seed=0)


@pytest.fixture
def specs() -> list[str]:
    return [s.id for s in load_space("tiny").filter("ConvNet-D1-W4-*")]  # 4 candidates


def _sources(train: Split, cfg: TrainConfig = CFG) -> list[TrainingSource]:
    proxy = get_builder("random", ipc=2, seed=0).build(train)
    ps = proxy_source(proxy, cfg)
    return [ps, *early_stopping_sources([ps], train, cfg), full_source(train, cfg)]


def _interrupt_after(n: int, seen: list[RunRow]) -> Callable[[RunRow], None]:
    """An ``on_result`` that appends each stored row to ``seen`` and, at the ``n``-th, stops the run as Ctrl-C does."""

    def on_result(row: RunRow) -> None:
        seen.append(row)
        if len(seen) == n:
            raise KeyboardInterrupt

    return on_result


def _results(out: Path) -> pd.DataFrame:
    frame = ResultsStore(out).frame()
    return frame[RESULT_COLUMNS].sort_values(["source_id", "arch_id", "seed"]).reset_index(drop=True)


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    sources = _sources(train)
    seen: list[RunRow] = []
    stop = _interrupt_after(5, seen)
    with pytest.raises(KeyboardInterrupt):
        evaluate(specs, sources, test, out_dir=tmp_path / "a", seeds=[0, 1], progress=False, on_result=stop)
    assert len(ResultsStore(tmp_path / "a").rows()) == 5  # everything finished is kept

    trained: list[RunRow] = []
    res = evaluate(specs, sources, test, out_dir=tmp_path / "a", seeds=[0, 1], progress=False, on_result=trained.append)
    total = len(specs) * len(sources) * 2
    assert (res.planned, res.skipped, res.trained) == (total, 5, total - 5)
    assert {r.key for r in trained}.isdisjoint({r.key for r in seen})  # only the missing runs were trained

    again = evaluate(specs, sources, test, out_dir=tmp_path / "a", seeds=[0, 1], progress=False)
    assert again.trained == 0 and again.skipped == total

    evaluate(specs, sources, test, out_dir=tmp_path / "b", seeds=[0, 1], progress=False)
    pd.testing.assert_frame_equal(_results(tmp_path / "a"), _results(tmp_path / "b"))
    ta = build_report(tmp_path / "a", n_boot=50).table.drop(["Time cost (min)", "Wall time (min)"])
    tb = build_report(tmp_path / "b", n_boot=50).table.drop(["Time cost (min)", "Wall time (min)"])
    pd.testing.assert_frame_equal(ta, tb)


def test_report_figures_are_recomputed_from_stored_rows(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    sources = _sources(train)
    evaluate(specs, sources, test, out_dir=tmp_path, seeds=[0, 1], progress=False)
    frame = ResultsStore(tmp_path).frame()
    truth = candidate_scores(frame[frame["source_id"] == "full"])
    proxy_rows = frame[frame["source_id"] == sources[0].id]
    want = compare(candidate_scores(proxy_rows), truth, n_boot=100, seed=3)
    report = build_report(tmp_path, n_boot=100, seed=3)
    got = report.metrics.set_index("column").loc[sources[0].id]
    assert got["spearman_all"] == pytest.approx(want.correlations[("spearman", "all")].value, nan_ok=True)
    assert got["spearman_all_low"] == pytest.approx(want.correlations[("spearman", "all")].low, nan_ok=True)
    assert got["kendall_all"] == pytest.approx(want.correlations[("kendall", "all")].value, nan_ok=True)
    assert got["performance"] == pytest.approx(want.performance)
    assert got["seconds"] == pytest.approx(proxy_rows["seconds"].sum())
    assert got["images"] == 8 and got["n_ok"] == len(specs) * 2


def test_diverged_candidates_are_recorded_and_the_run_goes_on(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    wild = TrainConfig(epochs=2, batch_size=16, lr=1e12)
    res = evaluate(specs, [full_source(train, wild)], test, out_dir=tmp_path, progress=False)
    rows = ResultsStore(tmp_path).rows()
    assert len(rows) == len(specs) == res.trained
    diverged = [r for r in rows if r.status == "diverged"]
    assert diverged and res.diverged == len(diverged)
    assert all(r.reason and r.accuracy != r.accuracy for r in diverged)  # NaN accuracy, a reason


def _flaky_trainer(spec: ArchSpec | str, train: Split, test: Split, config: TrainConfig, seed: int) -> RunOutcome:
    if "AS-BN" in str(spec):
        raise RuntimeError("simulated out of memory\nsecond line")
    return train_and_evaluate(spec, train, test, config, seed)


def test_a_failing_candidate_is_stored_as_failed(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    train, test = data
    res = evaluate(specs, [full_source(train, CFG)], test, out_dir=tmp_path, progress=False, trainer=_flaky_trainer)
    rows = {r.arch_id: r for r in ResultsStore(tmp_path).rows()}
    bad = rows["ConvNet-D1-W4-AS-BN-AP"]
    assert bad.status == "failed" and bad.reason == "RuntimeError: simulated out of memory second line"
    assert res.failed == 1 and res.ok == len(specs) - 1


def test_joblib_two_workers_equal_one(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    train, test = data
    sources = _sources(train)
    evaluate(specs, sources, test, out_dir=tmp_path / "one", progress=False)
    res = evaluate(specs, sources, test, out_dir=tmp_path / "two", n_jobs=2, progress=False)
    assert res.trained == len(specs) * len(sources)
    pd.testing.assert_frame_equal(_results(tmp_path / "one"), _results(tmp_path / "two"))


def test_batched_seeds_equal_one_by_one(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    train, test = data
    sources = _sources(train)[:1]
    seeds = (0, 1, 2)
    evaluate(specs, sources, test, out_dir=tmp_path / "one", seeds=seeds, progress=False, batch_seeds=False)
    res = evaluate(specs, sources, test, out_dir=tmp_path / "many", seeds=seeds, progress=False, batch_seeds=True)
    assert res.trained == len(specs) * len(seeds) == res.ok
    one, many = _results(tmp_path / "one"), _results(tmp_path / "many")
    exact = [c for c in RESULT_COLUMNS if c != "accuracy"]
    pd.testing.assert_frame_equal(one[exact], many[exact])
    # Stacked training sums in another order: accuracies agree to a test image or so.
    assert (one["accuracy"] - many["accuracy"]).abs().max() <= 2 / len(test)


@pytest.mark.skipif(not kernels.available(), reason="no C compiler here: no fused kernel, so auto stays off on a CPU")
def test_auto_on_a_cpu_batches_the_seeds_of_candidates_whose_blocks_fuse(
    data: tuple[Split, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxy and early-stopping runs of an instance-norm, avg-pooled candidate train their seeds as
    one stacked network; a max-pooled BatchNorm candidate and whole-data runs stay one by one."""
    import nas_proxy.plan as plan_module  # where the evaluator's tasks train

    train, test = data
    sources = _sources(train)
    fusing, plain = "ConvNet-D2-W8-AR-IN-AP", "ConvNet-D2-W4-AS-BN-MP"
    batched: list[tuple[str, tuple[int, ...]]] = []
    real = plan_module.train_many

    def spy(arch: str, tr: Split, te: Split, cfg: TrainConfig, seeds: list[int], **kw: Any) -> list[RunOutcome]:
        batched.append((arch, tuple(seeds)))
        return real(arch, tr, te, cfg, seeds, **kw)

    monkeypatch.setattr(plan_module, "train_many", spy)
    res = evaluate([fusing, plain], sources, test, out_dir=tmp_path / "auto", seeds=(0, 1), progress=False)
    assert res.ok == 2 * 2 * len(sources)
    assert batched == [(fusing, (0, 1))] * 2  # the proxy and early stopping, not the whole set
    evaluate([fusing, plain], sources, test, out_dir=tmp_path / "one", seeds=(0, 1), progress=False, batch_seeds=False)
    one, auto = _results(tmp_path / "one"), _results(tmp_path / "auto")
    assert (one["accuracy"] - auto["accuracy"]).abs().max() <= 2 / len(test)


def test_batched_seeds_fall_back_to_one_by_one_on_failure(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas_proxy.plan as plan_module  # where the evaluator's tasks train

    def broken(*args: object, **kwargs: object) -> list[RunOutcome]:
        raise RuntimeError("stacking failed")

    monkeypatch.setattr(plan_module, "train_many", broken)
    train, test = data
    res = evaluate(
        specs,
        [full_source(train, CFG)],
        test,
        out_dir=tmp_path,
        seeds=(0, 1),
        progress=False,
        trainer=_flaky_trainer,
        batch_seeds=True,
    )
    rows = ResultsStore(tmp_path).rows()
    failed = {(r.arch_id, r.seed) for r in rows if r.status == "failed"}
    assert failed == {("ConvNet-D1-W4-AS-BN-AP", 0), ("ConvNet-D1-W4-AS-BN-AP", 1)}
    assert res.ok == 2 * (len(specs) - 1)


def test_dask_local_cluster(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    train, test = data
    sources = [full_source(train, CFG)]
    evaluate(specs, sources, test, out_dir=tmp_path / "one", progress=False)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c,
        distributed.Client(c) as client,
    ):
        res = evaluate(
            specs, sources, test, out_dir=tmp_path / "dask", backend="dask", scheduler=client, progress=False
        )
    assert res.trained == len(specs)
    pd.testing.assert_frame_equal(_results(tmp_path / "one"), _results(tmp_path / "dask"))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def test_a_store_from_another_protocol_is_refused_untouched(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    evaluate(specs[:2], [full_source(train, CFG)], test, out_dir=tmp_path, progress=False)
    before = _snapshot(tmp_path)
    other = TrainConfig(epochs=3, batch_size=16)
    with pytest.raises(NasProxyError, match=r"another protocol \(epochs 2 -> 3\)"):
        evaluate(specs, [full_source(train, other)], test, out_dir=tmp_path, progress=False)
    small_test = test.subset(list(range(10)))
    with pytest.raises(NasProxyError, match="test_images"):
        evaluate(specs, [full_source(train, CFG)], small_test, out_dir=tmp_path, progress=False)
    assert _snapshot(tmp_path) == before


def test_bad_input_is_refused_before_anything_is_written(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    out = tmp_path / "run"
    mnist_like = Split(train.images, train.labels, 4, "mnist", train.mean, train.std)
    cases = [
        (dict(sources=[full_source(mnist_like, CFG)]), "made from dataset 'mnist'"),
        (dict(n_jobs=0), "n_jobs must be a positive integer"),
        (dict(backend="spark"), "unknown backend 'spark'"),
        (dict(seeds=[]), "at least one training seed"),
        (dict(specs=[]), "no candidate"),
        (dict(specs=["ConvNet-D9"]), "malformed architecture id"),
        (dict(rankers=["nope"]), "unknown ranker 'nope'"),
    ]
    for change, message in cases:
        kwargs = dict(
            specs=specs, sources=[full_source(train, CFG)], test=test, out_dir=out, progress=False, ranker_train=train
        )
        kwargs.update(change)
        with pytest.raises(NasProxyError, match=message):
            evaluate(**kwargs)  # type: ignore[arg-type]
        assert not out.exists()


def test_ground_truth_export_and_reuse(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    train, test = data
    sources = _sources(train)
    evaluate(specs, sources, test, out_dir=tmp_path / "a", seeds=[0, 1], progress=False, space="tiny")
    path = export_ground_truth(tmp_path / "a", tmp_path / "gt" / "synthetic-tiny.csv")
    gt = load_ground_truth(path)
    assert gt.dataset == "synthetic" and gt.config == CFG and sorted(gt.arch_ids) == sorted(specs)
    assert gt.protocol["seeds"] == [0, 1] and gt.protocol["rows"] == len(specs) * 2

    res = evaluate(specs, sources[:2], test, out_dir=tmp_path / "b", seeds=[0, 1], progress=False, ground_truth=gt)
    assert res.imported == len(specs) * 2
    assert res.trained == len(specs) * 2 * 2  # proxy and early stopping only: the whole data is not retrained
    pd.testing.assert_frame_equal(_results(tmp_path / "a"), _results(tmp_path / "b"))

    with pytest.raises(NasProxyError, match="lacks 1 of the 5 selected candidates"):
        evaluate(
            [*specs, "ConvNet-D2-W4-AR-IN-AP"],
            sources[:1],
            test,
            out_dir=tmp_path / "c",
            progress=False,
            ground_truth=gt,
        )
    path.write_text(path.read_text().replace("ok", "ok ", 1))
    with pytest.raises(NasProxyError, match="does not match the SHA-256"):
        load_ground_truth(path)


def test_zero_cost_rankers_are_stored_and_reported(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    pytest.importorskip("nas_proxy.zero_cost")
    train, test = data
    res = evaluate(
        specs,
        [full_source(train, CFG)],
        test,
        out_dir=tmp_path,
        progress=False,
        rankers=["synflow", "params"],
        ranker_train=train,
    )
    assert res.scores == 2 * len(specs)
    scores = ResultsStore(tmp_path).scores_frame()
    assert set(scores["ranker"]) == {"synflow", "params"}
    report = build_report(tmp_path, n_boot=20)
    labels = list(report.table.columns)
    assert labels[0] == "whole data" and {"synflow", "params", "flops"} <= set(labels)
    again = evaluate(
        specs,
        [full_source(train, CFG)],
        test,
        out_dir=tmp_path,
        progress=False,
        rankers=["synflow", "params"],
        ranker_train=train,
    )
    assert again.scores == 0  # resumed: nothing rescored


def test_demo_runs_end_to_end_on_a_small_config(tmp_path: Path) -> None:
    from nas_proxy.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        dataset="synthetic",
        space="tiny",
        candidates=4,
        methods=("random", "not-a-method"),
        train_images=200,
        test_images=100,
        proxy_epochs=2,
        full_epochs=1,
        rankers="params",
    )
    result = run_demo(tmp_path, config=cfg, n_jobs=1, progress=False)
    assert [p.name for p in result.proxies] == ["synthetic-random-ipc10-s0.npz"]
    assert "| Performance (%) |" in result.markdown and "random ipc10" in result.markdown
    assert "seed to seed (whole data, seed 0 vs 1)" in result.markdown  # the demo trains two seeds
    assert (tmp_path / "report" / "report.md").exists()
    again = run_demo(tmp_path, config=cfg, n_jobs=1, progress=False)  # resumes: reuses proxies and rows
    assert again.markdown.split("| Time cost")[0] == result.markdown.split("| Time cost")[0]


def test_batched_candidates_equal_one_by_one(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    """Candidates of one group (and their seeds) trained as one stacked network, in workers too."""
    from nas_proxy.evaluate import _jobs, _runs
    from nas_proxy.plan import DataShape, ExecutionSettings, plan_runs

    train, test = data
    sources = _sources(train)  # a proxy (full batch), early stopping (mini-batches) and the whole set
    seeds = (0, 1)
    asked = ExecutionSettings(batch_seeds=False, batch_candidates=True)
    tasks = plan_runs(_runs(_jobs(specs, sources, seeds), sources), DataShape.of(test), asked, "cpu").tasks
    runs = len(specs) * len(seeds)
    assert sorted(len(t) for t in tasks) == [1] * runs + [runs] * 2  # whole-data runs stay one by one
    evaluate(specs, sources, test, out_dir=tmp_path / "one", seeds=seeds, progress=False, batch_candidates=False)
    for n_jobs in (1, 2):
        out = tmp_path / f"group-{n_jobs}"
        res = evaluate(
            specs, sources, test, out_dir=out, seeds=seeds, n_jobs=n_jobs, progress=False, batch_candidates=True
        )
        assert res.trained == runs * len(sources) == res.ok
        one, many = _results(tmp_path / "one"), _results(out)
        exact = [c for c in RESULT_COLUMNS if c != "accuracy"]
        pd.testing.assert_frame_equal(one[exact], many[exact])
        assert (one["accuracy"] - many["accuracy"]).abs().max() <= 2 / len(test)


def test_fast_options_reach_the_stacked_runs_and_the_record(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas_proxy.plan as plan_module  # where the evaluator's tasks train
    from nas_proxy.plan import train_candidates
    from nas_proxy.stacked import FastOptions

    seen: list[FastOptions | None] = []

    def spy(*args: Any, **kwargs: Any) -> list[RunOutcome]:
        seen.append(kwargs.get("options"))
        return train_candidates(*args, **kwargs)

    monkeypatch.setattr(plan_module, "train_candidates", spy)
    train, test = data
    options = FastOptions(channels_last=True)
    res = evaluate(
        specs, _sources(train)[:1], test, out_dir=tmp_path, progress=False, batch_candidates=True, fast_options=options
    )
    assert res.ok == len(specs) and seen == [options]
    protocol = ResultsStore(tmp_path).read_protocol()
    assert protocol is not None and protocol["invocations"][-1]["fast_options"] == "channels_last"


def test_curves_flow_from_training_to_ground_truth_file_and_back(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    full_cfg = TrainConfig(epochs=3, batch_size=16, curve=(1, 2, 3), curve_steps=(2,))
    proxy_cfg = TrainConfig(epochs=4, batch_size=16, curve=(2,))
    proxy = proxy_source(get_builder("random", ipc=2, seed=0).build(train), proxy_cfg)
    sources = [proxy, full_source(train, full_cfg)]
    evaluate(specs, sources, test, out_dir=tmp_path / "a", seeds=[0, 1], progress=False, space="tiny")
    rows = ResultsStore(tmp_path / "a").rows()
    full_rows = [r for r in rows if r.source_id == "full"]
    assert all([p["step"] for p in r.curve] == [2, 4, 8, 12] for r in full_rows)  # 64 images / 16: 4 steps an epoch
    assert all(r.curve[-1]["accuracy"] == r.accuracy for r in full_rows)
    assert all([p["step"] for p in r.curve] == [2] for r in rows if r.source_id == proxy.id)  # 8 images: 1 step/epoch

    path = export_ground_truth(tmp_path / "a", tmp_path / "gt" / "t.csv")
    table = pd.read_csv(path)
    assert [c for c in table.columns if c.startswith("accuracy_")] == ["accuracy_s2", "accuracy_e1", "accuracy_e2"]
    gt = load_ground_truth(path)
    assert gt.fidelity_column(2) == "accuracy_e2" and gt.fidelity_column(3) == "accuracy"
    with pytest.raises(NasProxyError, match="no fidelity of 5 epochs; valid: 1, 2, 3"):
        gt.fidelity_column(5)
    slim = load_ground_truth(export_ground_truth(tmp_path / "a", tmp_path / "gt" / "e1.csv", fidelity=1))
    assert [f["column"] for f in slim.fidelities] == ["accuracy_e1"]
    with pytest.raises(NasProxyError, match="no whole-data fidelity of 7 epochs"):
        export_ground_truth(tmp_path / "a", tmp_path / "gt" / "x.csv", fidelity=7)

    # Imported rows carry their curves, so the report of a store that reuses the file sees every fidelity.
    evaluate(specs, [proxy], test, out_dir=tmp_path / "b", seeds=[0, 1], progress=False, ground_truth=gt)
    imported = {(r.arch_id, r.seed): r for r in ResultsStore(tmp_path / "b").rows() if r.source_id == "full"}
    for r in full_rows:
        got = imported[(r.arch_id, r.seed)].curve
        assert [(p["step"], p["accuracy"]) for p in got] == [(p["step"], p["accuracy"]) for p in r.curve[:-1]]
    report = build_report(tmp_path / "a", n_boot=20)
    assert report.convergence["epoch"].tolist() == [0.5, 1.0, 2.0, 3.0]
    ceiling = next(c for c in report.columns if c.kind == "ceiling")
    on_proxy = next(c for c in report.columns if c.id == proxy.id)
    assert ceiling.comparison is not None and on_proxy.comparison is not None
    for k, name in (("all", "all"), ("50%", "top half")):
        share = (
            on_proxy.comparison.correlations[("spearman", k)].value
            / ceiling.comparison.correlations[("spearman", k)].value
        )
        cell = report.table.loc[f"Share of the seed-to-seed ceiling (Spearman {name})", on_proxy.label]
        assert cell == ("n/a" if math.isnan(share) else f"{share:.2f}")
    # Early stopping at the recorded step budget is a column: seed 0's run at step 2 against seed 1's end.
    early = next(c for c in report.columns if c.id == "early-curve:2")
    seed0_at2 = {r.arch_id: r.curve[0]["accuracy"] for r in full_rows if r.seed == 0}
    seed1_end = {r.arch_id: r.accuracy for r in full_rows if r.seed == 1}
    assert early.scores.to_dict() == seed0_at2 and early.label.startswith("early stopping 2 steps, 0.5x a proxy run")
    want_rho = compare(pd.Series(seed0_at2), pd.Series(seed1_end), n_boot=0).correlations[("spearman", "all")].value
    assert early.comparison is not None
    assert early.comparison.correlations[("spearman", "all")].value == pytest.approx(want_rho, nan_ok=True)
    assert early.cost.seconds == pytest.approx(sum(r.seconds * 2 / 12 for r in full_rows if r.seed == 0))
    assert [label for label, _ in report.proxy_epochs] == [proxy.label]
    md = report.markdown()
    assert "## The ground truth: convergence" in md and "## Seed noise" in md and "## Proxy epochs" in md
    at1 = build_report(tmp_path / "a", n_boot=20, fidelity=1)
    assert at1.truth_fidelity == "epoch 1"
    want = candidate_scores(
        pd.DataFrame(
            [{"arch_id": r.arch_id, "status": r.status, "accuracy": r.curve[1]["accuracy"]} for r in full_rows]
        )
    )
    pd.testing.assert_series_equal(at1.truth.sort_index(), want.sort_index(), check_names=False)
    with pytest.raises(NasProxyError, match="no curve point at epoch 9"):
        build_report(tmp_path / "a", n_boot=20, fidelity=9)


def test_old_store_without_curves_still_reports(data: tuple[Split, Split], specs: list[str], tmp_path: Path) -> None:
    train, test = data
    evaluate(specs, _sources(train), test, out_dir=tmp_path, seeds=[0], progress=False)
    report = build_report(tmp_path, n_boot=20)
    assert report.convergence.empty and not report.proxy_epochs
    assert any("no seed-to-seed ceiling" in n for n in report.notes)
    assert "## The ground truth: convergence" not in report.markdown()


def test_a_report_of_an_unfinished_run_says_it_is_partial(
    data: tuple[Split, Split], specs: list[str], tmp_path: Path
) -> None:
    train, test = data
    sources = [full_source(train, CFG)]
    stop = _interrupt_after(3, [])
    with pytest.raises(KeyboardInterrupt):
        evaluate(specs, sources, test, out_dir=tmp_path, seeds=[0, 1], progress=False, on_result=stop)
    report = build_report(tmp_path, n_boot=10)
    assert report.incomplete == ("whole data: 3 of 8 planned runs stored",)
    assert report.markdown().splitlines()[2].startswith("**PARTIAL: this run is still in progress")
    evaluate(specs, sources, test, out_dir=tmp_path, seeds=[0, 1], progress=False)
    finished = build_report(tmp_path, n_boot=10)
    assert finished.incomplete == () and "PARTIAL" not in finished.markdown()
