"""The stacked network and its loop agree with the plain loop: bit for bit for one model, else to float tolerance."""

from __future__ import annotations

from typing import Any

import pytest
import torch

# One of every norm, every pool, every activation; all tiny.
from stacked_cases import FULL_BATCH, MINI_BATCH, SPECS

from nas_proxy import kernels
from nas_proxy.data import Split
from nas_proxy.errors import UnknownNameError
from nas_proxy.models import build_model
from nas_proxy.stacked import FastOptions, stacked_accuracy, train_stacked
from nas_proxy.train import TrainConfig, train_and_evaluate, train_model


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


@pytest.mark.skipif(not kernels.available(), reason="no C compiler here: PyTorch's kernels serve")
def test_stacked_norm_blocks_run_fused_and_one_model_keeps_pytorchs_kernels(
    data: tuple[Split, Split], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several models: each norm -> ReLU -> pooling block wide enough is one fused kernel (the
    test above holds them to the loop). One model: PyTorch's kernels, bit for bit the loop."""
    train, _ = data
    widths: list[int] = []
    real = kernels.norm_act_pool

    def spy(x: torch.Tensor, *args: Any) -> torch.Tensor:
        widths.append(x.shape[-1])
        return real(x, *args)

    monkeypatch.setattr(kernels, "norm_act_pool", spy)
    arch = "ConvNet-D2-W8-AR-IN-AP"  # maps of 32x32, then 16x16
    train_stacked([build_model(arch, seed=s) for s in (0, 1)], train, FULL_BATCH, [0, 1])
    assert sorted(set(widths)) == [16, 32]
    widths.clear()
    train_stacked([build_model(arch, seed=0)], train, FULL_BATCH, [0])
    assert widths == []


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


@pytest.mark.parametrize("text", ["none", "channels_last", "bf16,compile", "compile=reduce-overhead,channels_last"])
def test_fast_options_round_trip_through_their_text(text: str) -> None:
    options = FastOptions.parse(text)
    assert FastOptions.parse(options.text) == options
    assert options.channels_last == ("channels_last" in text) and options.bf16 == ("bf16" in text)


@pytest.mark.parametrize("text", ["fast", "bf16=1", "compile=warp", ""])
def test_fast_options_name_what_is_valid(text: str) -> None:
    with pytest.raises(UnknownNameError, match="valid: "):
        FastOptions.parse(text)
