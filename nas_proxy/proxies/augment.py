"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021) as pure functions on tensors.

An augmentation step is two calls: :func:`sample_params` draws one set of random parameters from
a seeded ``torch.Generator``, and :func:`apply` applies them to a batch. Applying the *same*
parameters to the real and the synthetic batch of a matching step is what makes the augmentation
"siamese"; every transform is differentiable with respect to the images, so the gradient of the
matching loss flows back through it into the synthetic images.

Following the authors' ``DiffAugment`` in its default "single" mode, one step applies one
transform picked at random from the strategy (``"color"`` is brightness, saturation and contrast
in turn). Magnitudes are the authors' ``ParamDiffAug`` defaults (:class:`AugConfig`). Parameters
are drawn on the CPU, so a seed gives the same augmentation on every device.

Parameters hold one value per image (``n`` = the batch size) or one value shared by the whole
batch (``n = 1``, what the authors' siamese mode does: every image of both batches gets the
first image's draw).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nas_proxy.errors import NasProxyError, UnknownNameError


@dataclass(frozen=True)
class AugConfig:
    """Augmentation magnitudes: the defaults of the authors' ``ParamDiffAug``."""

    ratio_scale: float = 1.2  # scale factors in [1/1.2, 1.2] per axis
    ratio_rotate: float = 15.0  # degrees, uniform in [-15, 15]
    ratio_crop_pad: float = 0.125  # translation up to 1/8 of the side, zero fill
    ratio_cutout: float = 0.5  # a square of half the side is zeroed
    prob_flip: float = 0.5
    brightness: float = 1.0  # added offset uniform in [-0.5, 0.5]
    saturation: float = 2.0  # channel deviation scaled by uniform [0, 2]
    contrast: float = 0.5  # deviation from the image mean scaled by uniform [0.5, 1.5]


Values = Mapping[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class AugParams:
    """One draw: which transform, and its random values (each of shape ``(n,)``, on the CPU)."""

    transform: str
    values: Values


# ----------------------------------------------------------------------------- the transforms
# Each transform is a pair: sample(n, (H, W), generator, config) -> values; apply(x, values) -> x.
# Values of shape (n,) broadcast over a batch of n images, or over any batch when n == 1.


def _uniform(n: int, g: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _sample_color(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    return {"brightness": _uniform(n, g), "saturation": _uniform(n, g), "contrast": _uniform(n, g)}


def _color(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        x = x + (_per_image(v["brightness"]) - 0.5) * cfg.brightness
        mean = x.mean(dim=1, keepdim=True)  # over channels: a no-op on one-channel images
        x = (x - mean) * (_per_image(v["saturation"]) * cfg.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (_per_image(v["contrast"]) + cfg.contrast) + mean

    return apply


def _sample_crop(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    # int(side * ratio + 0.5): 4 pixels on 28 and 32 px images, as the authors.
    sx, sy = (int(s * cfg.ratio_crop_pad + 0.5) for s in size)
    return {
        "dx": torch.randint(-sx, sx + 1, (n,), generator=g),
        "dy": torch.randint(-sy, sy + 1, (n,), generator=g),
    }


def _crop(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        """Translate by (dx, dy) pixels with zero fill: pad by one, gather clamped indices."""
        b, c, h, w = x.shape
        padded = F.pad(x, [1, 1, 1, 1])
        rows = (torch.arange(h, device=x.device) + v["dx"].view(-1, 1) + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device) + v["dy"].view(-1, 1) + 1).clamp(0, w + 1)
        out = padded.gather(2, rows.expand(b, h)[:, None, :, None].expand(b, c, h, w + 2))
        return out.gather(3, cols.expand(b, w)[:, None, None, :].expand(b, c, h, w))

    return apply


def _cutout_side(side: int, cfg: AugConfig) -> int:
    return int(side * cfg.ratio_cutout + 0.5)


def _sample_cutout(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for axis, side in zip(("x", "y"), size, strict=True):
        cut = _cutout_side(side, cfg)
        # Centre in [0, side] (even cut) or [0, side - 1] (odd), as the authors' offsets.
        centre = torch.randint(0, side + (1 - cut % 2), (n,), generator=g)
        out[f"{axis}0"] = centre - cut // 2
        out[f"{axis}1"] = centre - cut // 2 + cut
    return out


def _cutout(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        """Zero the square rows [x0, x1) x cols [y0, y1) (clipped to the image)."""
        h, w = x.shape[-2:]
        r = torch.arange(h, device=x.device)
        k = torch.arange(w, device=x.device)
        in_rows = (r >= v["x0"].view(-1, 1)) & (r < v["x1"].view(-1, 1))
        in_cols = (k >= v["y0"].view(-1, 1)) & (k < v["y1"].view(-1, 1))
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)

    return apply


def _sample_flip(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    return {"flip": torch.rand(n, generator=g) < cfg.prob_flip}


def _flip(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        return torch.where(v["flip"].view(-1, 1, 1, 1), x.flip(3), x)

    return apply


def _sample_scale(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    r = cfg.ratio_scale
    return {"sx": _uniform(n, g, 1.0 / r, r), "sy": _uniform(n, g, 1.0 / r, r)}


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` through the (n, 2, 3) affine map ``theta`` (bilinear, zero padding)."""
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _scale(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        sx, sy = v["sx"], v["sy"]
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
        return _affine(x, theta)

    return apply


def _sample_rotate(n: int, size: tuple[int, int], g: torch.Generator, cfg: AugConfig) -> dict[str, torch.Tensor]:
    limit = cfg.ratio_rotate / 180.0 * math.pi
    return {"angle": _uniform(n, g, -limit, limit)}


def _rotate(cfg: AugConfig) -> Callable[[torch.Tensor, Values], torch.Tensor]:
    def apply(x: torch.Tensor, v: Values) -> torch.Tensor:
        cos, sin = torch.cos(v["angle"]), torch.sin(v["angle"])
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return _affine(x, theta)

    return apply


Sampler = Callable[[int, tuple[int, int], torch.Generator, AugConfig], dict[str, torch.Tensor]]
Applier = Callable[[AugConfig], Callable[[torch.Tensor, Values], torch.Tensor]]

# name -> (draw the values, make the function that applies them)
TRANSFORMS: dict[str, tuple[Sampler, Applier]] = {
    "color": (_sample_color, _color),
    "crop": (_sample_crop, _crop),
    "cutout": (_sample_cutout, _cutout),
    "flip": (_sample_flip, _flip),
    "scale": (_sample_scale, _scale),
    "rotate": (_sample_rotate, _rotate),
}

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
# Digits change meaning when mirrored, so the DSA paper drops flip for MNIST and SVHN.
DIGIT_DATASETS = frozenset({"mnist", "svhn"})


def default_strategy(dataset: str) -> str:
    """The DSA strategy for ``dataset``: every transform, less flip for digit datasets."""
    if dataset.lower() in DIGIT_DATASETS:
        return "_".join(t for t in DEFAULT_STRATEGY.split("_") if t != "flip")
    return DEFAULT_STRATEGY


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``"color_crop"`` -> ``("color", "crop")``; ``""`` or ``"none"`` -> ``()`` (no augmentation)."""
    if strategy.strip().lower() in ("", "none"):
        return ()
    names = tuple(strategy.strip().split("_"))
    for name in names:
        if name not in TRANSFORMS:
            raise UnknownNameError("augmentation", name, TRANSFORMS)
    return names


def sample_params(
    strategy: str | tuple[str, ...],
    size: tuple[int, int],
    generator: torch.Generator,
    *,
    n: int = 1,
    config: AugConfig | None = None,
) -> AugParams | None:
    """Draw one augmentation: a transform picked uniformly from ``strategy`` and its values.

    ``size`` is the images' (H, W); ``n = 1`` shares one draw across every image (siamese use),
    ``n = batch size`` draws one per image. Returns None for an empty strategy.
    """
    names = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    if not names:
        return None
    if n < 1:
        raise NasProxyError(f"augmentation needs n >= 1 draws, got {n}")
    cfg = config or AugConfig()
    name = names[int(torch.randint(len(names), (1,), generator=generator))]
    sample, _ = TRANSFORMS[name]
    return AugParams(name, sample(n, size, generator, cfg))


def apply(x: torch.Tensor, params: AugParams | None, config: AugConfig | None = None) -> torch.Tensor:
    """Apply one drawn augmentation to the batch ``x`` (N, C, H, W); differentiable in ``x``."""
    if params is None:
        return x
    n = next(iter(params.values.values())).shape[0]
    if n not in (1, x.shape[0]):
        raise NasProxyError(f"augmentation drawn for {n} images applied to a batch of {x.shape[0]}")
    # Tiny host-to-device copies of the drawn values; they never wait on the device.
    values = {k: t.to(x.device, non_blocking=True) for k, t in params.values.items()}
    _, make = TRANSFORMS[params.transform]
    return make(config or AugConfig())(x, values).contiguous()


def augment(
    x: torch.Tensor, strategy: str | tuple[str, ...], generator: torch.Generator, config: AugConfig | None = None
) -> torch.Tensor:
    """Augment ``x`` with one draw per image (not siamese), e.g. when training a net on the set."""
    params = sample_params(strategy, (x.shape[-2], x.shape[-1]), generator, n=x.shape[0], config=config)
    return apply(x, params, config)
