"""The plan's training paths (train_many, train_candidates, train_model_fast) agree with the plain loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

# One of every norm, every pool, every activation; all tiny.
from stacked_cases import FULL_BATCH, MINI_BATCH, SPECS, assert_same_outcomes

from nas_proxy import kernels
from nas_proxy.data import Split
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.microbatch import KEPT_MEMORY_MICRO_BATCH_BYTES, MICRO_BATCH_BYTES
from nas_proxy.models import build_model, count_flops
from nas_proxy.plan import (
    STACKED_STEP_MAX_FLOPS,
    STRATEGIES,
    DataShape,
    ExecutionPlan,
    ExecutionSettings,
    Plan,
    Run,
    choose_plan,
    cpu_count,
    micro_batch_budget,
    outcome,
    plan_runs,
    stacks_fused,
    train_and_evaluate_fast,
    train_candidates,
    train_many,
    train_model_fast,
    train_runs,
    train_task,
)
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.stacked import FastOptions, StackedConvNets, group_key, step_memory, train_stacked
from nas_proxy.train import RunOutcome, TrainConfig, train_and_evaluate, train_model


@pytest.mark.skipif(not kernels.available(), reason="no C compiler here: PyTorch's kernels serve")
def test_stacks_fused_predicts_which_stacks_have_fusable_blocks() -> None:
    """The evaluator's rule (from the spec) agrees with the stacked network's (from its layers)."""
    for spec in load_space("convnet720-narrow"):
        net = StackedConvNets([build_model(spec, seed=s) for s in (0, 1)])
        if stacks_fused(spec, DataShape()):
            assert len(net.fusable_rows) == spec.depth, spec.id
        else:
            assert not net.fusable_rows or count_flops(spec) > STACKED_STEP_MAX_FLOPS, spec.id


@pytest.mark.parametrize("arch", ["ConvNet-D2-W8-AR-IN-AP", "ConvNet-D2-W4-AS-BN-MP"])
def test_train_model_fast_is_train_model_epoch_by_epoch(data: tuple[Split, Split], arch: str) -> None:
    """Same weights at every epoch callback and at the end, whichever path the plan takes."""
    train, _ = data
    seen: dict[str, list[dict[str, torch.Tensor]]] = {"plain": [], "fast": []}

    def record(into: str) -> Callable[[int, torch.nn.Module], None]:
        def on_epoch(epoch: int, net: torch.nn.Module) -> None:
            assert epoch == len(seen[into]) + 1
            seen[into].append({k: v.clone() for k, v in net.state_dict().items()})

        return on_epoch

    reference, model = build_model(arch, seed=1), build_model(arch, seed=1)
    ref_stats = train_model(reference, train, MINI_BATCH, 1, on_epoch=record("plain"))
    stats = train_model_fast(model, train, MINI_BATCH, 1, on_epoch=record("fast"))
    assert (stats.steps, stats.diverged) == (ref_stats.steps, ref_stats.diverged)
    assert len(seen["fast"]) == len(seen["plain"]) == MINI_BATCH.epochs
    for ref_state, got_state in zip(seen["plain"], seen["fast"], strict=True):
        for key, value in ref_state.items():  # BatchNorm's num_batches_tracked counted once per step
            assert torch.equal(got_state[key], value), key
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_train_model_fast_stops_a_diverged_run_like_train_model(data: tuple[Split, Split]) -> None:
    train, _ = data
    wild = TrainConfig(epochs=6, batch_size=8, lr=1e6)
    calls: list[int] = []
    stats = train_model_fast(
        build_model("ConvNet-D2-W8-AR-IN-AP", seed=0), train, wild, 0, on_epoch=lambda e, _: calls.append(e)
    )
    ref = train_model(build_model("ConvNet-D2-W8-AR-IN-AP", seed=0), train, wild, 0)
    assert stats.diverged and ref.diverged and stats.steps == ref.steps
    assert len(calls) < wild.epochs  # no callback after the diverged epoch


@pytest.mark.parametrize("arch", SPECS)
@pytest.mark.parametrize("strategy", ["loop", "stacked", "auto"])
def test_train_many_matches_one_by_one(data: tuple[Split, Split], arch: str, strategy: str) -> None:
    train, test = data
    seeds = [3, 1]
    expected = [train_and_evaluate(arch, train, test, FULL_BATCH, s) for s in seeds]
    got = train_many(arch, train, test, FULL_BATCH, seeds, strategy=strategy)
    assert_same_outcomes(expected, got, len(test))


def test_stacked_in_chunks_matches(data: tuple[Split, Split]) -> None:
    train, test = data
    arch, seeds = SPECS[1], [4, 2, 9]
    whole = train_many(arch, train, test, FULL_BATCH, seeds, strategy="stacked")
    chunked = train_many(arch, train, test, FULL_BATCH, seeds, strategy="stacked", stack_size=2)
    assert_same_outcomes(whole, chunked, len(test))


def test_parallel_workers_match_and_keep_seed_order(data: tuple[Split, Split]) -> None:
    train, test = data
    arch, seeds = SPECS[0], [8, 2, 5]
    expected = [train_and_evaluate(arch, train, test, FULL_BATCH, s) for s in seeds]
    for stack_size in (None, 1):
        got = train_many(arch, train, test, FULL_BATCH, seeds, strategy="parallel", n_jobs=2, stack_size=stack_size)
        assert_same_outcomes(expected, got, len(test))


def test_divergence_is_reported_per_model(data: tuple[Split, Split]) -> None:
    train, test = data
    config = TrainConfig(epochs=10, lr=1e6, momentum=0.0)  # turns non-finite at step 4
    arch = "ConvNet-D1-W4-AR-NN-NP"
    expected = [train_and_evaluate(arch, train, test, config, s) for s in (0, 1)]
    got = train_many(arch, train, test, config, [0, 1], strategy="stacked")
    assert [o.status for o in got] == [o.status for o in expected] == ["diverged", "diverged"]
    assert [o.steps for o in got] == [o.steps for o in expected]


def test_same_seeds_same_results(data: tuple[Split, Split]) -> None:
    train, test = data
    runs = [train_many(SPECS[0], train, test, MINI_BATCH, [0, 1], strategy="stacked") for _ in range(2)]
    assert [o.accuracy for o in runs[0]] == [o.accuracy for o in runs[1]]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_auto_picks_a_valid_plan(data: tuple[Split, Split], n_jobs: int) -> None:
    train, test = data
    for arch in ("ConvNet-D1-W4-AR-IN-AP", "ConvNet-D4-W256-AR-BN-NP"):
        plan = choose_plan(ArchSpec.from_id(arch), train, FULL_BATCH, n_seeds=4, n_jobs=n_jobs)
        assert plan.strategy in STRATEGIES and plan.strategy != "auto"
        assert plan.strategy != "parallel" or (n_jobs > 1 and plan.n_jobs <= n_jobs)
    got = train_many(SPECS[0], train, test, FULL_BATCH, [0], strategy="auto")
    got.append(train_and_evaluate_fast(SPECS[0], train, test, FULL_BATCH, 0))
    expected = train_and_evaluate(SPECS[0], train, test, FULL_BATCH, 0)
    assert_same_outcomes([expected, expected], got, len(test))


def test_auto_stacks_each_process_share_of_seeds_where_stacking_pays(data: tuple[Split, Split]) -> None:
    train, _ = data

    def plan(arch: str, n_seeds: int, n_jobs: int) -> Plan:
        return choose_plan(ArchSpec.from_id(arch), train, FULL_BATCH, n_seeds=n_seeds, n_jobs=n_jobs)

    # A narrow avg-pooled net: all seeds of a process in one network, in workers their share each.
    assert plan("ConvNet-D3-W8-AR-IN-AP", 10, 1) == Plan("stacked", stack_size=10)
    assert plan("ConvNet-D3-W8-AR-IN-AP", 10, 2) == Plan("parallel", stack_size=5, n_jobs=2, inner="stacked")
    assert plan("ConvNet-D3-W8-AR-IN-AP", 5, 2) == Plan("parallel", stack_size=3, n_jobs=2, inner="stacked")
    assert plan("ConvNet-D3-W8-AR-IN-AP", 25, 1) == Plan("stacked", stack_size=10)  # chunks of at most 10
    # LayerNorm's stacked form is not the fused kernel: one model a network. Max pooling: the loop.
    assert plan("ConvNet-D3-W8-AR-LN-AP", 10, 2).stack_size == 1
    assert plan("ConvNet-D3-W8-AR-IN-MP", 10, 1) == Plan("loop")


def test_bad_arguments_name_the_problem(data: tuple[Split, Split]) -> None:
    train, test = data
    with pytest.raises(UnknownNameError, match="strategy"):
        train_many(SPECS[0], train, test, FULL_BATCH, [0], strategy="warp")
    with pytest.raises(NasProxyError, match="distinct"):
        train_many(SPECS[0], train, test, FULL_BATCH, [1, 1])
    with pytest.raises(NasProxyError, match="n_jobs"):
        train_many(SPECS[0], train, test, FULL_BATCH, [0], n_jobs=0)
    with pytest.raises(UnknownNameError, match="compile"):
        FastOptions(compile="fastest")
    with pytest.raises(UnknownNameError):
        Plan("auto")
    assert train_many(SPECS[0], train, test, FULL_BATCH, []) == []


# Every norm and activation at one depth, width and pooling: one group (group_key), 15 candidates.
def test_train_candidates_matches_one_by_one_in_input_order(data: tuple[Split, Split]) -> None:
    train, test = data
    # Two groups interleaved (pooling differs), one candidate with two seeds.
    runs = [(GROUP[4], 0), ("ConvNet-D2-W4-AR-BN-MP", 1), (GROUP[9], 2), (GROUP[4], 3), (GROUP[13], 4)]
    expected = [train_and_evaluate(a, train, test, FULL_BATCH, s) for a, s in runs]
    for max_group in (None, 2):
        got = train_candidates(runs, train, test, FULL_BATCH, max_group=max_group)
        assert_same_outcomes(expected, got, len(test))
    # The GPU's memory format (run here on a CPU: same numbers to float tolerance).
    nhwc = train_candidates(runs, train, test, FULL_BATCH, options=FastOptions(channels_last=True))
    assert_same_outcomes(expected, nhwc, len(test))
    # A tiny memory budget leaves one model per network: then every run is bit-identical to the loop.
    alone = train_candidates(runs, train, test, FULL_BATCH, group_memory=1)
    assert [o.accuracy for o in alone] == [o.accuracy for o in expected]


def test_group_key_and_memory_bound_the_groups(data: tuple[Split, Split]) -> None:
    train, _ = data
    assert len({group_key(ArchSpec.from_id(a)) for a in GROUP}) == 1
    space_keys = {group_key(s) for s in load_space("convnet720")}
    assert len(space_keys) == 48  # 4 depths x 4 widths x 3 poolings, 15 candidates each
    small, big = (ArchSpec.from_id(a) for a in ("ConvNet-D1-W32-AR-IN-AP", "ConvNet-D4-W256-AR-IN-NP"))
    assert 0 < step_memory(small, 1, 28, 100) < step_memory(big, 1, 28, 100)
    with pytest.raises(NasProxyError, match="depth, width, pooling"):
        train_stacked(
            [build_model("ConvNet-D2-W4-AR-IN-AP", seed=0), build_model("ConvNet-D2-W8-AR-IN-AP", seed=0)],
            train,
            FULL_BATCH,
            [0, 0],
        )
    with pytest.raises(NasProxyError, match="max_group"):
        train_candidates([(GROUP[0], 0)], train, train, FULL_BATCH, max_group=0)


GROUP = [f"ConvNet-D2-W4-{act}-{norm}-AP" for norm in ("NN", "BN", "LN", "IN", "GN") for act in ("AS", "AR", "AL")]


# ----------------------------------------------------------------------------- the plan of many runs


def _tasks(plan: ExecutionPlan) -> list[list[tuple[str, int, str]]]:
    return [[(plan.runs[i].arch_id, plan.runs[i].seed, plan.runs[i].pool) for i in task] for task in plan.tasks]


FUSING, PLAIN = "ConvNet-D2-W8-AR-IN-AP", "ConvNet-D2-W8-AS-BN-AP"  # one group_key, one fuses
RUNS = [Run(a, s, pool, pool == "full") for pool in ("proxy", "full") for a in (FUSING, PLAIN) for s in (0, 1)]


@pytest.mark.skipif(not kernels.available(), reason="no C compiler here: no fused kernel, so auto stays off on a CPU")
def test_auto_on_a_cpu_stacks_only_the_proxy_seeds_of_fusing_candidates() -> None:
    plan = plan_runs(RUNS, DataShape(), ExecutionSettings(), "cpu")
    assert plan.fused and plan.workers == 1 and plan.device == "cpu"
    assert _tasks(plan)[0] == [(FUSING, 0, "proxy"), (FUSING, 1, "proxy")]
    assert sorted(len(t) for t in plan.tasks) == [1] * 6 + [2]
    assert plan.describe()["seeds"] == 1 and plan.describe()["alone"] == 6


def test_the_plan_judges_fusing_on_the_real_data_shape() -> None:
    """A net small on 28px images is too large to stack on 64px ones (its FLOPs grow with the map)."""
    spec = ArchSpec.from_id("ConvNet-D2-W32-AR-IN-AP")  # 5.6 MFLOPs an image at 28px, 27 at 64px
    assert stacks_fused(spec, DataShape(1, 28, 10))
    assert not stacks_fused(spec, DataShape(3, 64, 10))
    if kernels.available():
        runs = [Run(spec.id, s, "proxy") for s in (0, 1)]
        assert len(plan_runs(runs, DataShape(1, 28, 10), ExecutionSettings(), "cpu").tasks) == 1
        assert len(plan_runs(runs, DataShape(3, 64, 10), ExecutionSettings(), "cpu").tasks) == 2


def test_on_a_gpu_seeds_and_candidates_stack_but_whole_data_runs_stay_apart_from_other_candidates() -> None:
    plan = plan_runs(RUNS, DataShape(), ExecutionSettings(), "cuda:0")
    assert not plan.fused
    tasks = _tasks(plan)
    assert [(a, s) for a, s, _ in tasks[0]] == [(FUSING, 0), (FUSING, 1), (PLAIN, 0), (PLAIN, 1)]  # one group
    assert sorted(len(t) for t in tasks) == [2, 2, 4]  # whole data: each candidate's seeds, not the group
    asked = ExecutionSettings(batch_seeds=False, batch_candidates=False)
    assert all(len(t) == 1 for t in plan_runs(RUNS, DataShape(), asked, "cuda").tasks)


def test_the_micro_batch_budget_is_the_plans_and_bigger_in_our_workers() -> None:
    here = plan_runs(RUNS, DataShape(), ExecutionSettings(), "cpu")
    workers = plan_runs(RUNS, DataShape(), ExecutionSettings(n_jobs=2), "cpu")
    assert here.micro_batch_bytes == MICRO_BATCH_BYTES == micro_batch_budget(in_workers=False)
    assert workers.micro_batch_bytes == KEPT_MEMORY_MICRO_BATCH_BYTES and workers.workers == 2
    assert workers.tasks == here.tasks  # where runs execute changes no grouping


def test_a_failed_stacked_task_is_logged_with_its_reason_and_retried_one_by_one(
    data: tuple[Split, Split], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import nas_proxy.plan as plan_module

    def broken(*args: object, **kwargs: object) -> list[RunOutcome]:
        raise RuntimeError("no memory\nfor the stack")

    monkeypatch.setattr(plan_module, "train_many", broken)
    train, test = data
    runs = [(SPECS[0], 0), (SPECS[0], 1)]
    with caplog.at_level("WARNING", logger="nas_proxy.plan"):
        got = train_task(runs, train, test, FULL_BATCH)
    expected = [train_and_evaluate(SPECS[0], train, test, FULL_BATCH, s) for s in (0, 1)]
    assert got == [replace(o, seconds=g.seconds) for o, g in zip(expected, got, strict=True)]  # type: ignore[union-attr]
    (record,) = caplog.records
    assert "2 runs" in record.message and SPECS[0] in record.message
    assert "RuntimeError: no memory for the stack" in record.message and "one by one" in record.message


def test_a_run_that_fails_alone_comes_back_as_its_exception(data: tuple[Split, Split]) -> None:
    train, test = data

    def flaky(arch: ArchSpec | str, tr: Split, te: Split, cfg: TrainConfig, seed: int) -> RunOutcome:
        raise ValueError(f"bad {seed}")

    got = train_task([(SPECS[1], 3)], train, test, FULL_BATCH, trainer=flaky)
    assert len(got) == 1 and isinstance(got[0], ValueError) and str(got[0]) == "bad 3"
    with pytest.raises(ValueError, match="bad 3"):
        outcome(got[0])


def test_train_runs_trains_every_run_of_a_plan_once(data: tuple[Split, Split]) -> None:
    train, test = data
    runs = [Run(a, s) for a in (SPECS[0], SPECS[1]) for s in (0, 1)]
    plan = plan_runs(runs, DataShape.of(test), ExecutionSettings(batch_seeds=True), "cpu")
    got = dict(train_runs(plan, train, test, FULL_BATCH))
    assert sorted(got) == [0, 1, 2, 3]
    expected = [train_and_evaluate(r.arch_id, train, test, FULL_BATCH, r.seed) for r in runs]
    assert_same_outcomes(expected, [outcome(got[i]) for i in range(4)], len(test))


# ----------------------------------------------------------------------------- execution settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_jobs": 0}, r"^n_jobs must be a positive integer \(or -1 for all cores\), got 0$"),
        ({"n_jobs": True}, "n_jobs must be a positive integer"),
        ({"n_jobs": 1.5}, "n_jobs must be a positive integer"),
        ({"backend": "spark"}, r"^unknown backend 'spark'; valid: loky, dask$"),
        ({"scheduler": "tcp://x:1"}, "^scheduler needs backend dask$"),
        ({"batch_seeds": "yes"}, r"batch_seeds must be True, False or None \(auto\)"),
    ],
)
def test_execution_settings_are_checked_once_when_made(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(NasProxyError, match=message) as info:
        ExecutionSettings(**fields)
    assert "\n" not in str(info.value)


def test_execution_settings_resolve_all_cores_and_keep_their_switches() -> None:
    settings = ExecutionSettings(n_jobs=-1, fast=FastOptions(channels_last=True))
    assert settings.workers == cpu_count() >= 1
    assert settings.fast.text == "channels_last" and ExecutionSettings() == ExecutionSettings()


def test_evaluate_takes_settings_or_keywords_not_both(data: tuple[Split, Split], tmp_path: Any) -> None:
    from nas_proxy.evaluate import evaluate, full_source

    train, test = data
    with pytest.raises(NasProxyError, match="not both"):
        evaluate([SPECS[0]], [full_source(train, FULL_BATCH)], test, out_dir=tmp_path / "x", n_jobs=2,
                 execution=ExecutionSettings(), progress=False)  # fmt: skip
    assert not (tmp_path / "x" / "runs.jsonl").exists()
