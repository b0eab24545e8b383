"""Differentiable siamese augmentation: what each transform does, that a draw is shared, that gradients flow."""

from __future__ import annotations

import pytest
import torch

from nas_proxy.errors import NasProxyError, UnknownNameError
from nas_proxy.proxies.augment import (
    DEFAULT_STRATEGY,
    TRANSFORMS,
    AugConfig,
    AugParams,
    apply,
    augment,
    default_strategy,
    parse_strategy,
    sample_params,
)

SIZE = (12, 12)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 3, channels: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, *SIZE, generator=_gen(seed))


def test_default_strategy_drops_flip_for_digits_only() -> None:
    assert default_strategy("fashionmnist") == DEFAULT_STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert default_strategy("cifar10") == DEFAULT_STRATEGY
    for digits in ("mnist", "svhn", "MNIST"):
        assert default_strategy(digits) == "color_crop_cutout_scale_rotate"


def test_parse_strategy() -> None:
    assert parse_strategy(DEFAULT_STRATEGY) == tuple(TRANSFORMS)
    assert parse_strategy("none") == () == parse_strategy("")
    with pytest.raises(UnknownNameError, match="unknown augmentation 'blur'; valid: color, crop"):
        parse_strategy("crop_blur")


def test_the_authors_default_magnitudes() -> None:
    cfg = AugConfig()
    assert (cfg.ratio_scale, cfg.ratio_rotate, cfg.ratio_crop_pad, cfg.ratio_cutout) == (1.2, 15.0, 0.125, 0.5)
    assert (cfg.brightness, cfg.saturation, cfg.contrast, cfg.prob_flip) == (1.0, 2.0, 0.5, 0.5)


def test_one_transform_per_draw_uniformly_and_seeded() -> None:
    g = _gen(3)
    picks = [sample_params(DEFAULT_STRATEGY, SIZE, g) for _ in range(600)]
    names = [p.transform for p in picks if p is not None]
    counts = {t: names.count(t) for t in TRANSFORMS}
    assert all(60 < c < 140 for c in counts.values()), counts  # about 100 each
    first, second = picks[0], sample_params(DEFAULT_STRATEGY, SIZE, _gen(3))
    assert first is not None and second is not None and first.transform == second.transform
    assert all(torch.equal(first.values[k], second.values[k]) for k in first.values)
    assert sample_params("none", SIZE, g) is None
    assert torch.equal(apply(_batch(), None), _batch())


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_shared_draw_transforms_every_image_alike(name: str) -> None:
    """Siamese: one draw (n=1) applied to two batches equals applying it to their concatenation."""
    real, syn = _batch(5, seed=1), _batch(2, seed=2)
    for seed in range(4):
        p = sample_params(name, SIZE, _gen(seed), n=1)
        assert p is not None and p.transform == name
        assert all(v.shape == (1,) for v in p.values.values())
        together = apply(torch.cat([real, syn]), p)
        torch.testing.assert_close(together, torch.cat([apply(real, p), apply(syn, p)]))
        # The same image in both batches comes out the same.
        torch.testing.assert_close(apply(real[:1], p), apply(real[:1].clone(), p))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_gradient_flows_through_every_transform(name: str) -> None:
    x = _batch(2, seed=4).double().requires_grad_(True)
    for seed in range(3):
        p = sample_params(name, SIZE, _gen(seed))
        assert p is not None
        out = apply(x, p)
        assert out.shape == x.shape
        (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    small = torch.randn(2, 1, 5, 5, dtype=torch.double, requires_grad=True)
    p = sample_params(name, (5, 5), _gen(7))
    assert torch.autograd.gradcheck(lambda t: apply(t, p), (small,))


def _params(name: str, **values: float | int | bool) -> AugParams:
    return AugParams(name, {k: torch.tensor([v]) for k, v in values.items()})


def test_crop_translates_with_zero_fill() -> None:
    x = _batch(1)
    out = apply(x, _params("crop", dx=1, dy=0))
    torch.testing.assert_close(out[..., :-1, :], x[..., 1:, :])
    assert bool((out[..., -1, :] == 0).all())
    out = apply(x, _params("crop", dx=0, dy=-2))
    torch.testing.assert_close(out[..., :, 2:], x[..., :, :-2])
    assert bool((out[..., :, :2] == 0).all())
    assert torch.equal(apply(x, _params("crop", dx=0, dy=0)), x)


def test_crop_shifts_at_most_an_eighth_of_the_side() -> None:
    p = sample_params("crop", (28, 28), _gen(0), n=2000)
    assert p is not None
    assert int(p.values["dx"].min()) == -4 and int(p.values["dx"].max()) == 4


def test_cutout_zeroes_a_half_side_square() -> None:
    x = torch.ones(1, 1, 12, 12)
    out = apply(x, _params("cutout", x0=3, x1=9, y0=2, y1=8))
    assert int((out == 0).sum()) == 36 and bool((out[0, 0, 3:9, 2:8] == 0).all())
    clipped = apply(x, _params("cutout", x0=-3, x1=3, y0=0, y1=6))
    assert int((clipped == 0).sum()) == 18
    p = sample_params("cutout", SIZE, _gen(1), n=500)
    assert p is not None and bool(((p.values["x1"] - p.values["x0"]) == 6).all())


def test_flip_color_scale_rotate() -> None:
    x = _batch(2)
    torch.testing.assert_close(apply(x, _params("flip", flip=True)), x.flip(3))
    assert torch.equal(apply(x, _params("flip", flip=False)), x)
    # brightness 0.5 adds nothing, saturation 0.5 * 2 and contrast 0.5 + 0.5 scale by one.
    torch.testing.assert_close(apply(x, _params("color", brightness=0.5, saturation=0.5, contrast=0.5)), x)
    shifted = apply(x, _params("color", brightness=1.0, saturation=0.5, contrast=0.5))
    torch.testing.assert_close(shifted, x + 0.5)
    torch.testing.assert_close(apply(x, _params("scale", sx=1.0, sy=1.0)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply(x, _params("rotate", angle=0.0)), x, atol=1e-5, rtol=0)
    zoomed = apply(x, _params("scale", sx=0.5, sy=0.5))  # samples the centre half: a 2x zoom
    assert not torch.allclose(zoomed, x)


def test_per_image_draws_and_size_checks() -> None:
    x = _batch(4)
    p = sample_params("rotate", SIZE, _gen(0), n=4)
    assert p is not None and len(set(p.values["angle"].tolist())) == 4
    with pytest.raises(NasProxyError, match="drawn for 4 images applied to a batch of 3"):
        apply(x[:3], p)
    out = augment(x, DEFAULT_STRATEGY, _gen(2))
    assert out.shape == x.shape
    torch.testing.assert_close(out, augment(x, DEFAULT_STRATEGY, _gen(2)))
