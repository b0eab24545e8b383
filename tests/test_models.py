from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_proxy.models import blocks, build_model, count_flops, count_params
from nas_proxy.space import ArchSpec, load_space


def test_reference_parameter_counts() -> None:
    assert count_params(build_model(ArchSpec(), 1, 28, 10)) == 317_706
    assert count_params(build_model(ArchSpec(norm="layernorm"), 1, 28, 10)) == 661_002


def test_default_convnet_layout() -> None:
    model = build_model("ConvNet-D3-W128-AR-IN-AP", 1, 28, 10)
    assert model.feature_shape == (128, 4, 4) and model.classifier.in_features == 2048
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(3, 3), (1, 1), (1, 1)]
    assert all(c.bias is not None for c in convs)
    norms = [m for m in model.features if isinstance(m, nn.GroupNorm)]
    assert all(n.num_groups == n.num_channels == 128 for n in norms)
    assert build_model("ConvNet-D3-W128-AR-IN-AP", 3, 32, 10).feature_shape == (128, 4, 4)


def test_norm_definitions() -> None:
    gn = build_model(ArchSpec(depth=1, width=32, norm="groupnorm"), 1, 28, 10).features[1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4
    ln = build_model(ArchSpec(depth=1, width=32, norm="layernorm"), 1, 28, 10).features[1]
    assert isinstance(ln, nn.LayerNorm) and tuple(ln.normalized_shape) == (32, 32, 32)
    bn = build_model(ArchSpec(depth=1, width=32, norm="batchnorm"), 1, 28, 10).features[1]
    assert isinstance(bn, nn.BatchNorm2d)
    leaky = build_model(ArchSpec(depth=1, act="leakyrelu"), 1, 28, 10).features[2]
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.01


def test_no_pool_keeps_32px_map() -> None:
    model = build_model(ArchSpec(depth=2, width=32, pool="none"), 1, 28, 10)
    assert model.classifier.in_features == 32 * 1024


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_all_720_build_and_forward(shape: tuple[int, int, int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for spec in load_space("convnet720"):
            out = build_model(spec, shape[1], shape[2], 10, seed=0).eval()(x)
            assert out.shape == (2, 10) and bool(torch.isfinite(out).all()), spec.id


def test_seeded_init_is_reproducible_and_leaves_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ArchSpec(width=8), seed=5)
    after = torch.rand(1)
    b = build_model(ArchSpec(width=8), seed=5)
    assert before == after
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_flops_hand_count() -> None:
    # D1 W4 relu, no norm, no pool, 1x28x28: conv -> 4x32x32, head 4096 -> 10.
    spec = ArchSpec(depth=1, width=4, norm="none", pool="none")
    out = 4 * 32 * 32
    expected = (2 * out * 9 + out) + out + (2 * 4096 * 10 + 10)
    assert count_flops(spec, 1, 28, 10) == expected
    assert count_flops(ArchSpec(width=256), 1, 28, 10) > count_flops(ArchSpec(width=32), 1, 28, 10)


@pytest.mark.parametrize(("in_channels", "image_size"), [(1, 28), (3, 32), (3, 12)])
def test_block_shapes_are_the_networks_own(in_channels: int, image_size: int) -> None:
    """One owner of the shape arithmetic: the network's layers, its FLOPs and the stacked memory
    estimate all read ``blocks``."""
    for spec in load_space("convnet720"):
        if spec.pool != "none" and image_size < 2 ** spec.depth + 2:
            continue  # too small for this many pooled blocks: ConvNet refuses it
        shapes = blocks(spec, in_channels, image_size)
        model = build_model(spec, in_channels, image_size)
        convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
        assert [(b.in_channels, b.padding) for b in shapes] == [(c.in_channels, c.padding[0]) for c in convs]
        assert model.feature_shape == (spec.width, shapes[-1].pooled, shapes[-1].pooled), spec.id
