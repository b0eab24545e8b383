from __future__ import annotations

import math
from typing import cast

import pytest
import torch
from torch import nn

from nas_proxy.data import Split, make_synthetic
from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.models import ConvNet, build_model, count_flops, count_params
from nas_proxy.space import ArchSpec, load_space
from nas_proxy.zero_cost import (
    DEFAULT_COMBINED_RANKER,
    JACOB_COV_K,
    RANKERS,
    RankerScore,
    baseline_scores,
    get_ranker,
    grad_norm,
    jacob_cov,
    list_rankers,
    module_flops,
    naswot,
    params,
    parse_rankers,
    rank_average,
    ranker_batch,
    score_arch,
    score_model,
    score_space,
    snip,
    synflow,
)

# ----------------------------------------------------------------------------- hand-made nets


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def _chain() -> nn.Sequential:
    """x -> 2x -> (2x, -2x): logits (2, -2) for x = 1, so p1 = 1 / (1 + e^4)."""
    return nn.Sequential(_linear([[2.0]]), _linear([[1.0], [-1.0]]))


# Two images whose first-layer (identity) pre-activations are (1,-1,-1) and (-1,1,-1).
_TWO = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])
_NO_LABELS = torch.tensor([0, 1])


def test_params_and_flops_by_hand() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    x = torch.zeros(4, 3)
    assert params(net, x, _NO_LABELS) == 3 * 2 + 2 + 2 * 1 + 1  # 11
    # Linear 2*3*2 + 2 bias, ReLU 2 elements, Linear 2*2*1 + 1 bias, for one image.
    assert RANKERS["flops"](net, x, _NO_LABELS) == 14 + 2 + 5


@pytest.mark.parametrize(
    "arch_id",
    ["ConvNet-D3-W8-AR-IN-AP", "ConvNet-D2-W8-AS-BN-MP", "ConvNet-D1-W8-AL-LN-NP", "ConvNet-D2-W8-AR-GN-NP"],
)
def test_hook_flops_agree_with_shape_formula(arch_id: str) -> None:
    model = build_model(arch_id, 1, 28, 10, seed=0)
    x = torch.zeros(2, 1, 28, 28)
    assert module_flops(model, x) == count_flops(arch_id, 1, 28, 10) == RANKERS["flops"](model, x, _NO_LABELS)


def test_grad_norm_by_hand_counts_weights_not_biases() -> None:
    # W = 0, b = 0: softmax (1/2, 1/2); x = (1, 2), label 0: dL/dW = (p - e0) x^T = [[-.5, -1], [.5, 1]].
    net = nn.Sequential(_linear([[0.0, 0.0], [0.0, 0.0]], bias=[0.0, 0.0]))
    value = grad_norm(net, torch.tensor([[1.0, 2.0]]), torch.tensor([0]))
    assert value == pytest.approx(math.sqrt(2.5), rel=1e-6)  # bias gradient (-.5, .5) left out


def test_grad_norm_and_snip_through_two_layers_by_hand() -> None:
    # dL/dlogits = (p0 - 1, p1) = (-p1, p1); dL/dw2 = (-2 p1, 2 p1); dL/dw1 = (1, -1).(-p1, p1) = -2 p1.
    p1 = 1.0 / (1.0 + math.exp(4.0))
    x, y = torch.tensor([[1.0]]), torch.tensor([0])
    assert grad_norm(_chain(), x, y) == pytest.approx(2 * math.sqrt(2) * p1 + 2 * p1, rel=1e-5)
    # |w1 g1| + |w2 . g2| = 2 * 2 p1 + (2 p1 + 2 p1).
    assert snip(_chain(), x, y) == pytest.approx(8 * p1, rel=1e-5)


def test_synflow_by_hand_and_signs_untouched() -> None:
    # |w1| = 2, |w2| = (1, 1); input 1: h = 2, R = 4; |w1 dR/dw1| = 2 * 2, |w2 dR/dw2| = 1*2 + 1*2.
    net = nn.Sequential(_linear([[-2.0]]), nn.ReLU(), _linear([[1.0], [-1.0]]))
    assert synflow(net, torch.randn(3, 1), _NO_LABELS) == pytest.approx(8.0, rel=1e-12)
    first, last = cast(nn.Linear, net[0]), cast(nn.Linear, net[2])
    assert first.weight.item() == -2.0 and last.weight.flatten().tolist() == [1.0, -1.0]
    assert all(p.grad is None for p in net.parameters())


def test_synflow_batchnorm_is_eval_mode_identity_on_fresh_stats() -> None:
    net = nn.Sequential(_linear([[-2.0]]), nn.BatchNorm1d(1), nn.ReLU(), _linear([[1.0], [-1.0]]))
    # Eval BN with running mean 0, var 1 divides by sqrt(1 + eps); both layers' saliency sums equal R.
    expected = 8.0 / math.sqrt(1.0 + 1e-5)
    assert synflow(net, torch.randn(3, 1), _NO_LABELS) == pytest.approx(expected, rel=1e-12)
    assert net.training and cast(nn.BatchNorm1d, net[1]).state_dict()["num_batches_tracked"].item() == 0


def test_synflow_runs_in_float64_and_flags_float64_overflow() -> None:
    big = [[2.0**100]]  # a power of two: exact in float32
    # R = 2^300 overflows float32 (max ~2^128) but not float64; each of the 3 layers contributes R.
    deep = nn.Sequential(*(_linear(big) for _ in range(3)))
    assert synflow(deep, torch.ones(1, 1), _NO_LABELS) == 3 * 2.0**300
    deeper = nn.Sequential(*(_linear(big) for _ in range(11)))  # 2^1100 > float64's max ~2^1024
    result = score_model("synflow", deeper, torch.ones(1, 1), torch.tensor([0]), arch_id="deeper")
    assert result.status == "overflow" and math.isnan(result.score) and "synflow" in result.reason


def test_jacob_cov_by_hand() -> None:
    # Jacobians of sum(relu(x)) are the on-patterns (1,0,0) and (0,1,0): correlation -1/2,
    # eigenvalues 1/2 and 3/2.
    net = nn.Sequential(_linear([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), nn.ReLU(), _linear([[1.0, 1.0, 1.0]]))
    k = JACOB_COV_K
    expected = -sum(math.log(v + k) + 1.0 / (v + k) for v in (0.5, 1.5))
    assert jacob_cov(net, _TWO, _NO_LABELS) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("act", [lambda: nn.ReLU(inplace=True), lambda: nn.LeakyReLU(0.01, inplace=True)])
def test_naswot_by_hand_reads_pre_activation_codes(act: type[nn.Module]) -> None:
    # ReLU codes (1,0,0) / (0,1,0); sigmoid pre-activations (1,0) / (0,0) -> codes (1,0) / (0,0).
    # K_ii = 5 units, K_ab = 1 (ReLU unit 3) + 1 (sigmoid unit 2) = 2: log det [[5,2],[2,5]] = log 21.
    net = nn.Sequential(
        _linear([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]),
        act(),
        _linear([[1.0, 0, 0], [0, 0, 1.0]]),
        nn.Sigmoid(),
    )
    assert naswot(net, _TWO, _NO_LABELS) == pytest.approx(math.log(21.0), rel=1e-12)


def test_naswot_singular_kernel_is_a_marked_failure() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    same = torch.ones(2, 3)
    result = score_model("naswot", net, same, _NO_LABELS, arch_id="twins")
    assert result.status == "failed" and math.isnan(result.score) and "singular" in result.reason


# ----------------------------------------------------------------------------- contract over the registry


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    train, _ = make_synthetic(num_classes=10, train_per_class=4, test_per_class=1, seed=0)
    return ranker_batch(train, size=8, seed=0)


@pytest.mark.parametrize("name", list_rankers())
def test_every_ranker_finite_deterministic_and_leaves_model_untouched(
    name: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = batch
    model = build_model("ConvNet-D2-W8-AR-BN-AP", 1, 28, 10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = get_ranker(name)(model, images, labels)
    second = get_ranker(name)(model, images, labels)
    assert isinstance(first, float) and math.isfinite(first) and first == second
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


EXTREME = [
    "ConvNet-D4-W256-AS-NN-NP",
    "ConvNet-D4-W256-AR-NN-NP",
    "ConvNet-D4-W256-AL-BN-NP",
    "ConvNet-D4-W256-AS-LN-NP",
    "ConvNet-D4-W32-AS-NN-MP",
    "ConvNet-D1-W32-AR-GN-AP",
]


@pytest.mark.parametrize("arch_id", EXTREME)
def test_extreme_specs_give_finite_scores(arch_id: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = batch
    results = score_space("all", [arch_id], (images, labels), 10, seed=0, progress=False)
    assert [r.ranker for r in results] == list_rankers()
    for r in results:
        assert r.status == "ok" and math.isfinite(r.score), (r.ranker, r.reason)


def test_score_arch_is_deterministic_for_a_seed(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = batch
    for name in list_rankers():
        a = score_arch(name, "ConvNet-D2-W8-AR-IN-AP", images, labels, 10, seed=3)
        b = score_arch(name, ArchSpec(2, 8, "relu", "instancenorm", "avgpool"), images, labels, 10, seed=3)
        assert a.status == "ok" and a.score == b.score and a.arch_id == b.arch_id == "ConvNet-D2-W8-AR-IN-AP"
    other = score_arch("snip", "ConvNet-D2-W8-AR-IN-AP", images, labels, 10, seed=4)
    assert other.score != score_arch("snip", "ConvNet-D2-W8-AR-IN-AP", images, labels, 10, seed=3).score


# ----------------------------------------------------------------------------- failure isolation


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this candidate cannot run")


def test_a_raising_model_is_marked_failed() -> None:
    result = score_model("snip", _Broken(), torch.zeros(2, 3), _NO_LABELS, arch_id="broken")
    assert isinstance(result, RankerScore)
    assert result.status == "failed" and math.isnan(result.score)
    assert "RuntimeError" in result.reason and "cannot run" in result.reason


def test_failures_mark_one_candidate_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    def boom(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        if cast(ConvNet, model).spec.width == 8:
            raise RuntimeError("boom on W8")
        return 1.0

    monkeypatch.setitem(RANKERS, "boom", boom)
    images, labels = batch
    specs = ["ConvNet-D1-W8-AR-NN-AP", "ConvNet-D1-W16-AR-NN-AP"]
    results = score_space(["boom", "params"], specs, (images, labels), 10, seed=0, progress=False)
    by = {(r.ranker, r.arch_id): r for r in results}
    assert by["boom", specs[0]].status == "failed" and "boom on W8" in by["boom", specs[0]].reason
    assert by["boom", specs[1]].status == "ok" and by["boom", specs[1]].score == 1.0
    assert all(by["params", s].status == "ok" for s in specs)


def test_unbuildable_spec_is_marked_failed() -> None:
    tiny = torch.zeros(2, 1, 8, 8)  # four pooled blocks do not fit in 8 px
    result = score_arch("params", "ConvNet-D4-W8-AR-NN-MP", tiny, _NO_LABELS, 10, seed=0)
    assert result.status == "failed" and "too small" in result.reason
    (from_space,) = score_space("params", ["ConvNet-D4-W8-AR-NN-MP"], (tiny, _NO_LABELS), 10, 0, progress=False)
    assert from_space.status == "failed"


def test_score_space_resumes_and_reports_each_score(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    specs = ["ConvNet-D1-W8-AR-NN-AP", "ConvNet-D1-W16-AR-NN-AP"]
    seen: list[RankerScore] = []
    first = score_space("params,flops", specs, batch, 10, seed=0, progress=False, on_result=seen.append)
    assert seen == first and len(first) == 4
    done = {(r.ranker, r.arch_id) for r in first[:3]}
    rest = score_space("params,flops", specs, batch, 10, seed=0, progress=False, skip=done)
    assert [(r.ranker, r.arch_id) for r in rest] == [("flops", specs[1])]
    assert rest[0].score == first[3].score


# ----------------------------------------------------------------------------- batch, registry, combining


def test_ranker_batch_is_seeded_and_stratified(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    images, labels = ranker_batch(train, size=64, seed=1)
    assert images.shape == (64, 1, 28, 28)
    counts = torch.bincount(labels, minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1
    again, labels_again = ranker_batch(train, size=64, seed=1)
    assert torch.equal(again, images) and torch.equal(labels_again, labels)
    assert not torch.equal(ranker_batch(train, size=64, seed=2)[0], images)
    _, few = ranker_batch(train, size=5, seed=0)
    assert len(set(few.tolist())) == 5
    with pytest.raises(NasProxyError, match="between 1 and 300"):
        ranker_batch(train, size=301)


def test_ranker_batch_fills_from_other_classes_when_one_runs_out(tiny_data: tuple[Split, Split]) -> None:
    train, _ = tiny_data
    keep = torch.cat([train.indices_of_class(0)[:2], train.indices_of_class(1)])
    _, labels = ranker_batch(train.subset(keep), size=12, seed=0)
    assert sorted(labels.tolist()) == [0, 0] + [1] * 10


def test_registry_and_parsing() -> None:
    assert list_rankers() == ["params", "flops", "grad_norm", "snip", "synflow", "jacob_cov", "naswot"]
    assert DEFAULT_COMBINED_RANKER in list_rankers()
    with pytest.raises(UnknownNameError, match="unknown ranker 'fisher'; valid: params, flops"):
        get_ranker("fisher")
    assert parse_rankers("all") == list_rankers()
    assert parse_rankers(" synflow, naswot,synflow ") == ["synflow", "naswot"]
    assert parse_rankers(["snip"]) == ["snip"]
    with pytest.raises(NasProxyError, match="no ranker given"):
        parse_rankers(" , ")
    with pytest.raises(UnknownNameError, match="valid: params"):
        parse_rankers("snip,bogus")
    with pytest.raises(UnknownNameError):
        score_space("bogus", ["ConvNet-D1-W8-AR-NN-AP"], (torch.zeros(1, 1, 28, 28), torch.zeros(1)), 10, 0)


def test_rank_average_by_hand() -> None:
    a = {"x": 1.0, "y": 2.0, "z": 3.0, "w": math.nan}
    b = {"x": 30.0, "y": 10.0, "z": 20.0, "w": 5.0, "v": 1.0}
    out = rank_average(a, b)
    # Over x, y, z (finite in both): ranks a = 1, 2, 3 and b = 3, 1, 2.
    assert {k: out[k] for k in "xyz"} == {"x": 2.0, "y": 1.5, "z": 2.5}
    assert math.isnan(out["w"]) and math.isnan(out["v"]) and set(out) == set("xyzwv")
    ties = rank_average({"p": 1.0, "q": 1.0, "r": 2.0}, {"p": 1.0, "q": 2.0, "r": 3.0})
    assert ties == {"p": 1.25, "q": 1.75, "r": 3.0}
    assert rank_average({}, {}) == {}


@pytest.mark.slow
def test_all_720_specs_score_finite() -> None:
    train, _ = make_synthetic(num_classes=10, train_per_class=4, test_per_class=1, seed=0)
    images, labels = ranker_batch(train, size=8, seed=0)
    results = score_space("all", load_space("convnet720"), (images, labels), 10, seed=0, progress=False)
    bad = [(r.ranker, r.arch_id, r.reason) for r in results if r.status != "ok" or not math.isfinite(r.score)]
    assert len(results) == 720 * len(list_rankers()) and not bad, bad[:10]


def test_baseline_rankers_are_params_and_flops() -> None:
    ids = ["ConvNet-D1-W4-AR-LN-AP", "ConvNet-D3-W128-AR-IN-AP"]
    base = baseline_scores(ids, 1, 28, 10)
    assert base["params"][ids[1]] == 317_706  # REFERENCE.md section 1
    assert base["params"][ids[0]] == count_params(build_model(ids[0], 1, 28, 10))
    assert base["flops"][ids[0]] == count_flops(ids[0], 1, 28, 10)
