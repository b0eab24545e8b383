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
