"""The reference ConvNet, built from an ArchSpec with name tables (no if/elif ladders).

Block, repeated ``depth`` times: conv 3x3 (bias) -> norm -> activation -> 2x2 pool; then one
linear head on the flattened map. Matches the authors' ``ConvNet`` (REFERENCE.md section 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nas_proxy.errors import NasProxyError
from nas_proxy.space import ArchSpec

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(negative_slope=0.01, inplace=True),
}

# Each factory gets the pre-pool feature shape (C, H, W).
NORMS: dict[str, Callable[[tuple[int, int, int]], nn.Module]] = {
    "none": lambda shape: nn.Identity(),
    "batchnorm": lambda shape: nn.BatchNorm2d(shape[0]),
    # LayerNorm over (C, H, W) with a full-shape affine, as the authors' code.
    "layernorm": lambda shape: nn.LayerNorm(list(shape), elementwise_affine=True),
    # Instance norm as GroupNorm with one group per channel: affine, no running stats.
    "instancenorm": lambda shape: nn.GroupNorm(shape[0], shape[0], affine=True),
    "groupnorm": lambda shape: nn.GroupNorm(4, shape[0], affine=True),
}

POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "none": None,
    "maxpool": lambda: nn.MaxPool2d(kernel_size=2, stride=2),
    "avgpool": lambda: nn.AvgPool2d(kernel_size=2, stride=2),
}


def first_padding(in_channels: int) -> int:
    """Padding 3 on one-channel input: the authors' trick that turns 28x28 into 32x32 maps."""
    return 3 if in_channels == 1 else 1


@dataclass(frozen=True)
class Block:
    """One block's shapes: its input channels, its conv's padding, its map's side before and after pooling."""

    in_channels: int
    padding: int
    size: int  # the conv's output (what norm and activation see)
    pooled: int  # after the 2x2 pooling (``size`` without pooling)


def blocks(spec: ArchSpec, in_channels: int, image_size: int) -> list[Block]:
    """The shapes of ``spec``'s blocks on ``image_size`` px input: the one place that works them out
    (the network, its FLOPs and the stacked trainer's memory estimate all read them here)."""
    out, channels, size = [], in_channels, image_size
    for d in range(spec.depth):
        pad = first_padding(in_channels) if d == 0 else 1
        size = size + 2 * pad - 2
        pooled = size // 2 if spec.pool != "none" else size
        out.append(Block(channels, pad, size, pooled))
        channels, size = spec.width, pooled
    return out


class ConvNet(nn.Module):
    """The paper's ConvNet; ``features`` then ``classifier``, like the authors' module."""

    def __init__(self, spec: ArchSpec, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for block in blocks(spec, in_channels, image_size):
            layers.append(nn.Conv2d(block.in_channels, spec.width, kernel_size=3, padding=block.padding))
            channels, size = spec.width, block.size
            layers.append(NORMS[spec.norm]((channels, size, size)))
            layers.append(ACTIVATIONS[spec.act]())
            pool = POOLS[spec.pool]
            if pool is not None:
                if size < 2:
                    raise NasProxyError(  # bad input (a dataset of tiny images), not a bug
                        f"{spec.id}: a {image_size}px input is too small for {spec.depth} pooled blocks"
                    )
                layers.append(pool())
                size = block.pooled
        self.features = nn.Sequential(*layers)
        self.feature_shape = (channels, size, size)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened final feature map: the embedding used by herding, k-center and DM."""
        out: torch.Tensor = self.features(x)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.embed(x))
        return logits


def build_model(
    spec: ArchSpec | str,
    in_channels: int = 1,
    image_size: int = 28,
    num_classes: int = 10,
    *,
    seed: int | None = None,
) -> ConvNet:
    """A freshly initialised ConvNet; with ``seed`` the initial weights are reproducible.

    The seed is applied inside ``torch.random.fork_rng`` so the caller's global RNG is untouched.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_id(spec)
    if seed is None:
        return ConvNet(spec, in_channels, image_size, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvNet(spec, in_channels, image_size, num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(spec: ArchSpec | str, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> int:
    """Forward FLOPs of one image, counting a multiply-add as 2 (convs, norms, pools, head).

    Worked out from the shapes, so it needs no forward pass and is exact for this family.
    """
    if isinstance(spec, str):
        spec = ArchSpec.from_id(spec)
    flops, channels, size = 0, in_channels, image_size
    for block in blocks(spec, in_channels, image_size):
        out = spec.width * block.size * block.size
        flops += 2 * out * (block.in_channels * 9) + out  # conv MACs + bias
        channels, size = spec.width, block.pooled
        if spec.norm != "none":
            flops += 4 * out  # centre, scale, affine multiply and add
        flops += out  # activation
        if spec.pool != "none":
            flops += out  # one op per input element of the 2x2 window
    features = channels * size * size
    return flops + 2 * features * num_classes + num_classes
