"""The builder contract as reusable checks: our test suite runs them over every registered builder,
and a plugin author runs the same ones over theirs.

In a plugin's tests (the package installed, so its entry point is registered)::

    from nas_proxy.proxies.contract import check_builder

    def test_my_builder_keeps_the_contract() -> None:
        check_builder("mine", iterations=2)  # tiny settings: a build of well under a second

Each ``check_*`` raises :class:`AssertionError` naming the broken clause (explicit raises, not
``assert``, so the checks also hold under ``python -O``). The clauses: a builder is a frozen value
of its hyperparameters, registered under its name; a build gives exactly ``ipc`` float32 images per
class, classes in order, finite, with a complete manifest; a fixed seed gives the same images
again, even with an empty cache; a saved proxy loads back equal; a selection (a manifest with
``indices``) keeps unique real training images.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nas_proxy.data import Split, make_synthetic
from nas_proxy.proxies import get_builder, get_builder_class, load_proxy, save_proxy
from nas_proxy.proxies.artifact import ProxySet
from nas_proxy.proxies.base import ProxyBuilder

CONTRACT_IPC = 2


def contract_data() -> tuple[Split, Split]:
    """The contract's data: 4 classes x 20 train / 5 test synthetic 1x28x28 images (cheap to train on)."""
    return make_synthetic(num_classes=4, train_per_class=20, test_per_class=5, seed=1)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


@contextmanager
def fresh_cache() -> Iterator[Path]:
    """``NAS_PROXY_CACHE`` pointed at an empty folder for the block, so no cached work hides a difference."""
    before = os.environ.get("NAS_PROXY_CACHE")
    with tempfile.TemporaryDirectory(prefix="nas-proxy-contract-") as tmp:
        os.environ["NAS_PROXY_CACHE"] = tmp
        try:
            yield Path(tmp)
        finally:
            if before is None:
                os.environ.pop("NAS_PROXY_CACHE", None)
            else:
                os.environ["NAS_PROXY_CACHE"] = before


def check_value(builder: ProxyBuilder) -> None:
    """A frozen value of its hyperparameters, registered under its name."""
    name = builder.name
    _require(get_builder_class(name) is type(builder), f"{name}: the registry's class for {name!r} is not this one")
    params = builder.params()
    _require(set(params) == set(type(builder).param_names()), f"{name}: params() must list every hyperparameter")
    _require("ipc" in params and "seed" in params, f"{name}: params() must include ipc and seed")
    try:
        builder.ipc = builder.ipc  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError(f"{name}: builders must be frozen (@dataclass(frozen=True))")
    _require(get_builder(name, **params) == builder, f"{name}: equal settings must give equal builders")


def check_layout(proxy: ProxySet, builder: ProxyBuilder, train: Split) -> None:
    """Exactly ``ipc`` float32 images per class, classes in order, finite, and a manifest that says so."""
    name, ipc, classes = builder.name, builder.ipc, train.num_classes
    shape = (ipc * classes, *train.images.shape[1:])
    _require(tuple(proxy.images.shape) == shape, f"{name}: images {tuple(proxy.images.shape)}, expected {shape}")
    _require(proxy.images.dtype == torch.float32, f"{name}: images must be float32, got {proxy.images.dtype}")
    _require(proxy.labels.dtype == torch.int64, f"{name}: labels must be int64, got {proxy.labels.dtype}")
    expected = [c for c in range(classes) for _ in range(ipc)]
    _require(proxy.labels.tolist() == expected, f"{name}: labels must be {ipc} of each class, classes in order")
    _require(bool(torch.isfinite(proxy.images).all()), f"{name}: images contain NaN or infinity")
    m = proxy.manifest
    got = (m.method, m.ipc, m.seed, m.images, m.num_classes)
    want = (name, ipc, builder.seed, ipc * classes, classes)
    _require(got == want, f"{name}: manifest (method, ipc, seed, images, classes) is {got}, expected {want}")
    _require(m.params == builder.params(), f"{name}: manifest params {m.params} differ from the builder's")
    _require(m.build_seconds >= 0, f"{name}: negative build_seconds {m.build_seconds}")


def check_deterministic(builder: ProxyBuilder, train: Split, proxy: ProxySet) -> None:
    """Built again with the same seed (and an empty cache), the same images and content hash."""
    with fresh_cache():
        again = builder.build(train)
    _require(torch.equal(again.images, proxy.images), f"{builder.name}: a second build with seed {builder.seed} "
             "gives other images (draw randomness only from the seed)")
    _require(again.manifest.content_hash == proxy.manifest.content_hash, f"{builder.name}: content hash differs")


def check_round_trip(proxy: ProxySet, directory: str | Path) -> None:
    """Saved and loaded back: equal images, labels, manifest and id."""
    back = load_proxy(save_proxy(proxy, Path(directory) / f"{proxy.manifest.method}.npz"))
    _require(torch.equal(back.images, proxy.images), f"{proxy.manifest.method}: images change on save/load")
    _require(torch.equal(back.labels, proxy.labels), f"{proxy.manifest.method}: labels change on save/load")
    _require(back.manifest == proxy.manifest and back.id == proxy.id, "manifest or id change on save/load")


def check_selection(proxy: ProxySet, train: Split) -> None:
    """A selection (manifest ``indices``) keeps unique rows of the training set, images and labels as they are."""
    indices = proxy.manifest.indices
    if indices is None:
        return  # synthesized images: nothing to check against
    name = proxy.manifest.method
    _require(len(set(indices)) == len(indices) == len(proxy), f"{name}: indices must be unique, one per image")
    rows = torch.tensor(indices)
    _require(torch.equal(proxy.images, train.images[rows]), f"{name}: images are not the indexed training images")
    _require(torch.equal(proxy.labels, train.labels[rows]), f"{name}: labels are not the indexed training labels")


def check_builder(name: str, *, ipc: int = CONTRACT_IPC, seed: int = 0, train: Split | None = None,
                  **params: Any) -> ProxySet:
    """Every clause for the builder registered as ``name`` (tiny ``params`` keep it fast); returns its build."""
    train = train if train is not None else contract_data()[0]
    builder = get_builder(name, ipc=ipc, seed=seed, **params)
    check_value(builder)
    with fresh_cache():
        proxy = builder.build(train)
    check_layout(proxy, builder, train)
    check_deterministic(builder, train, proxy)
    with tempfile.TemporaryDirectory(prefix="nas-proxy-contract-") as tmp:
        check_round_trip(proxy, tmp)
    check_selection(proxy, train)
    return proxy
