"""Shared fixtures: tiny synthetic data, and a cache dir of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas_proxy.data import Split, make_synthetic


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never read or write the user's cache.
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("NAS_PROXY_DEVICE", "cpu")
    torch.set_num_threads(1)


@pytest.fixture
def tiny_data() -> tuple[Split, Split]:
    """10 classes, 1x28x28, 30 train / 10 test images per class."""
    return make_synthetic(num_classes=10, train_per_class=30, test_per_class=10, seed=0)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    """The stacked-network tests' data: 100 training images, 50 test."""
    return make_synthetic(num_classes=10, train_per_class=10, test_per_class=5, seed=1)


@pytest.fixture(params=[False, True], ids=["whole-batches", "micro-batches"])
def micro(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run a test as is, and again with micro-batches forced (a W8 model's pieces of 7 images)."""
    if request.param:
        import nas_proxy.microbatch as microbatch

        monkeypatch.setattr(microbatch, "MICRO_BATCH_BYTES", 7 * 8 * 28 * 28 * 4)
    return bool(request.param)
