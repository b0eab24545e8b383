"""The fast training paths agree with the plain loop (train.py) to float tolerance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nas_proxy import fused
from nas_proxy.data import Split, make_synthetic
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.fast import (
    STACKED_STEP_MAX_FLOPS,
    STRATEGIES,
    FastOptions,
    Plan,
    StackedConvNets,
    avg_pool_2x2,
    choose_plan,
    group_key,
    stacked_accuracy,
    stacks_fused,
    step_memory,
    train_and_evaluate_fast,
    train_candidates,
    train_many,
    train_model_fast,
    train_stacked,
)
from nas_proxy.models import build_model, count_flops
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.train import RunOutcome, TrainConfig, train_and_evaluate, train_model

# One of every norm, every pool, every activation; all tiny.
SPECS = [
    "ConvNet-D2-W8-AR-IN-AP",
    "ConvNet-D2-W4-AS-BN-MP",
    "ConvNet-D1-W4-AL-LN-NP",
    "ConvNet-D2-W4-AR-GN-AP",
    "ConvNet-D1-W4-AR-NN-NP",
]
FULL_BATCH = TrainConfig(epochs=6, batch_size=256)  # 100 images: one step an epoch, as the NAS protocol
MINI_BATCH = TrainConfig(epochs=2, batch_size=32)  # several differently ordered batches per epoch


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    return make_synthetic(num_classes=10, train_per_class=10, test_per_class=5, seed=1)


@pytest.fixture(params=[False, True], ids=["whole-batches", "micro-batches"])
def micro(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test as is, and again with micro-batches forced (a W8 model's pieces of 7 images)."""
    if request.param:
        import nas_proxy.microbatch as microbatch

        monkeypatch.setattr(microbatch, "MICRO_BATCH_BYTES", 7 * 8 * 28 * 28 * 4)
    return bool(request.param)


def assert_same_outcomes(a: list[RunOutcome], b: list[RunOutcome], n_test: int) -> None:
    assert [o.status for o in a] == [o.status for o in b]
    assert [o.steps for o in a] == [o.steps for o in b]
    assert [o.params for o in a] == [o.params for o in b]
    for x, y in zip(a, b, strict=True):
        if x.status == "ok":  # float drift may move at most one test image across a boundary
            assert abs(x.accuracy - y.accuracy) <= 1 / n_test + 1e-9


@pytest.mark.parametrize("arch", SPECS)
@pytest.mark.parametrize("config", [FULL_BATCH, MINI_BATCH], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("seeds", [[0, 5, 7], [3]], ids=["three-models", "one-model"])
def test_stacked_training_matches_the_loop_parameter_for_parameter(
    data: tuple[Split, Split], arch: str, config: TrainConfig, seeds: list[int], micro: bool
) -> None:
    """Three models in one network: to float tolerance. One model: bit for bit (on a CPU), in
    micro-batches too (the same pieces as train_model's)."""
    train, _ = data
    reference = [build_model(arch, seed=s) for s in seeds]
    ref_stats = [train_model(m, train, config, s) for m, s in zip(reference, seeds, strict=True)]
    models = [build_model(arch, seed=s) for s in seeds]
    _, stats = train_stacked(models, train, config, seeds)
    assert [s.steps for s in stats] == [s.steps for s in ref_stats]
    for ref, got in zip(reference, models, strict=True):
        ref_state, got_state = ref.state_dict(), got.state_dict()
        assert ref_state.keys() == got_state.keys()
        for key, value in ref_state.items():  # parameters and BatchNorm running statistics
            if len(seeds) == 1:
                assert torch.equal(got_state[key], value), f"{arch} {key}"
            else:
                torch.testing.assert_close(got_state[key], value, rtol=1e-4, atol=1e-5, msg=f"{arch} {key}")


@pytest.mark.skipif(not fused.available(), reason="no C compiler here: PyTorch's kernels serve")
def test_stacked_norm_blocks_run_fused_and_one_model_keeps_pytorchs_kernels(
    data: tuple[Split, Split], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several models: each norm -> ReLU -> pooling block wide enough is one fused kernel (the
    test above holds them to the loop). One model: PyTorch's kernels, bit for bit the loop."""
    train, _ = data
    widths: list[int] = []
    real = fused.norm_act_pool

    def spy(x: torch.Tensor, *args: Any) -> torch.Tensor:
        widths.append(x.shape[-1])
        return real(x, *args)

    monkeypatch.setattr(fused, "norm_act_pool", spy)
    arch = "ConvNet-D2-W8-AR-IN-AP"  # maps of 32x32, then 16x16
    train_stacked([build_model(arch, seed=s) for s in (0, 1)], train, FULL_BATCH, [0, 1])
    assert sorted(set(widths)) == [16, 32]
    widths.clear()
    train_stacked([build_model(arch, seed=0)], train, FULL_BATCH, [0])
    assert widths == []


@pytest.mark.skipif(not fused.available(), reason="no C compiler here: PyTorch's kernels serve")
def test_stacks_fused_predicts_which_stacks_have_fusable_blocks() -> None:
    """The evaluator's rule (from the spec) agrees with the stacked network's (from its layers)."""
    for spec in load_space("convnet720-narrow"):
        net = StackedConvNets([build_model(spec, seed=s) for s in (0, 1)])
        if stacks_fused(spec):
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


@pytest.mark.parametrize(
    "size", [(2, 3, 8, 8), (2, 5, 7, 6), (1, 2, 4, 10), (4, 8, 14, 14), (3, 8, 12, 20), (2, 4, 32, 32)]
)
def test_avg_pool_2x2_is_avg_pool2d_bit_for_bit(size: tuple[int, int, int, int]) -> None:
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    grad = torch.randn(size[0], size[1], size[2] // 2, size[3] // 2, generator=torch.Generator().manual_seed(1))
    got, expected = avg_pool_2x2(x), F.avg_pool2d(y, 2, 2)
    assert torch.equal(got, expected)
    with torch.no_grad():  # testing takes another path
        assert torch.equal(avg_pool_2x2(x.detach()), expected)
    got.backward(grad)  # type: ignore[no-untyped-call]
    expected.backward(grad)  # type: ignore[no-untyped-call]
    assert x.grad is not None and y.grad is not None
    assert torch.equal(x.grad, y.grad)


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
GROUP = [f"ConvNet-D2-W4-{act}-{norm}-AP" for norm in ("NN", "BN", "LN", "IN", "GN") for act in ("AS", "AR", "AL")]


@pytest.mark.parametrize("config", [FULL_BATCH, MINI_BATCH], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("with_bn", [True, False], ids=["with-batchnorm", "per-image-norms"])
def test_a_group_of_different_candidates_trains_as_each_alone(
    data: tuple[Split, Split], config: TrainConfig, micro: bool, with_bn: bool
) -> None:
    """Mixed norms and activations in one stacked network: every model's tensors as if trained alone.

    With micro-batches forced, a group without BatchNorm runs in pieces and one with it whole.
    """
    train, _ = data
    order = GROUP[::-1][:7] + GROUP[:3]  # unsorted, with one architecture twice (other seed)
    if not with_bn:
        order = [a for a in order if "-BN-" not in a]
    seeds = list(range(len(order)))
    reference = [build_model(a, seed=s) for a, s in zip(order, seeds, strict=True)]
    ref_stats = [train_model(m, train, config, s) for m, s in zip(reference, seeds, strict=True)]
    models = [build_model(a, seed=s) for a, s in zip(order, seeds, strict=True)]
    _, stats = train_stacked(models, train, config, seeds)
    assert [s.steps for s in stats] == [s.steps for s in ref_stats]
    for arch, ref, got in zip(order, reference, models, strict=True):
        ref_state, got_state = ref.state_dict(), got.state_dict()
        assert ref_state.keys() == got_state.keys()
        for key, value in ref_state.items():
            torch.testing.assert_close(got_state[key], value, rtol=1e-4, atol=1e-5, msg=f"{arch} {key}")


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


def test_a_diverging_candidate_leaves_its_group_alone(data: tuple[Split, Split]) -> None:
    train, test = data
    runs = [(a, 0) for a in GROUP[3:9]]
    expected = [train_and_evaluate(a, train, test, FULL_BATCH, s) for a, s in runs]
    models = [build_model(a, seed=s) for a, s in runs]
    with torch.no_grad():
        models[2].classifier.weight[0, 0] = float("nan")  # this one is broken from the start
    net, stats = train_stacked(models, train, FULL_BATCH, [s for _, s in runs])
    assert [s.diverged for s in stats] == [i == 2 for i in range(len(runs))]
    for i, (acc, ref) in enumerate(zip(stacked_accuracy(net, test), expected, strict=True)):
        if i != 2:
            assert abs(acc - ref.accuracy) <= 1 / len(test) + 1e-9


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


@pytest.mark.parametrize("text", ["none", "channels_last", "bf16,compile", "compile=reduce-overhead,channels_last"])
def test_fast_options_round_trip_through_their_text(text: str) -> None:
    options = FastOptions.parse(text)
    assert FastOptions.parse(options.text) == options
    assert options.channels_last == ("channels_last" in text) and options.bf16 == ("bf16" in text)


@pytest.mark.parametrize("text", ["fast", "bf16=1", "compile=warp", ""])
def test_fast_options_name_what_is_valid(text: str) -> None:
    with pytest.raises(UnknownNameError, match="valid: "):
        FastOptions.parse(text)
