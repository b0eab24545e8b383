"""The builder contract, checked over every registered builder (Optuna-style contract tests).

Every name in ``list_builders()`` is tested; ``TINY`` holds the overrides that make a build take
well under a second on the tiny synthetic data. A key there that a builder does not have fails
loudly (``get_builder`` refuses it) rather than silently running the full budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nas_proxy.data import Split, make_synthetic
from nas_proxy.proxies import BUILDERS, ProxyBuilder, ProxySet, get_builder, list_builders, load_proxy, save_proxy

SMALL = "ConvNet-D1-W8-AR-IN-AP"

# Per-method tiny settings. Coreset builders train a ConvNet on the whole data; the matching
# builders (dc, dsa, dm in matching.py) run a few iterations of a narrow matching net.
TINY: dict[str, dict[str, Any]] = {
    "random": {},
    "herding": {"embed_arch": SMALL, "embed_epochs": 1},
    "kcenter": {"embed_arch": SMALL, "embed_epochs": 1},
    "forgetting": {"arch": SMALL, "epochs": 2},
    "dc": {"iterations": 2, "arch": SMALL},
    "dsa": {"iterations": 2, "arch": SMALL},
    "dm": {"iterations": 2, "arch": SMALL},
}

SELECTION = {"random", "herding", "kcenter", "forgetting"}
IPC = 2


def _builder(name: str, ipc: int = IPC, seed: int = 0) -> ProxyBuilder:
    return get_builder(name, ipc=ipc, seed=seed, **TINY.get(name, {}))


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    # 4 classes x 20 images: enough for every method, cheap for the ones that train.
    return make_synthetic(num_classes=4, train_per_class=20, test_per_class=5, seed=1)


@pytest.fixture(scope="module")
def built(data: tuple[Split, Split], tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProxySet]:
    """One build per method, shared by the checks below (each torch op on one thread)."""
    # A module fixture runs before the function-scoped autouse cache isolation: isolate it here.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAS_PROXY_CACHE", str(tmp_path_factory.mktemp("contract-cache")))
        mp.setenv("NAS_PROXY_DEVICE", "cpu")
        torch.set_num_threads(1)
        return {name: _builder(name).build(data[0]) for name in list_builders()}


def test_the_paper_methods_are_registered() -> None:
    assert {"random", "herding", "kcenter", "forgetting"} <= set(list_builders())
    assert list_builders()[:4] == ["random", "herding", "kcenter", "forgetting"]


@pytest.mark.parametrize("name", list_builders())
def test_builders_are_frozen_hyperparameter_values(name: str) -> None:
    builder = _builder(name)
    assert builder.name == name and BUILDERS[name] is type(builder)
    params = builder.params()
    assert params["ipc"] == IPC and params["seed"] == 0
    assert set(params) == set(type(builder).param_names())
    with pytest.raises(AttributeError):
        builder.ipc = 3  # type: ignore[misc]
    assert _builder(name) == builder  # a value: equal settings, equal builders


@pytest.mark.parametrize("name", list_builders())
def test_exactly_ipc_per_class_in_class_order(name: str, built: dict[str, ProxySet], data: tuple[Split, Split]) -> None:
    proxy, train = built[name], data[0]
    classes = train.num_classes
    assert proxy.images.shape == (IPC * classes, *train.images.shape[1:])
    assert proxy.images.dtype == torch.float32 and proxy.labels.dtype == torch.int64
    assert proxy.labels.tolist() == [c for c in range(classes) for _ in range(IPC)]
    assert bool(torch.isfinite(proxy.images).all())
    m = proxy.manifest
    assert (m.method, m.ipc, m.seed, m.images, m.num_classes) == (name, IPC, 0, IPC * classes, classes)
    assert m.params == _builder(name).params() and m.build_seconds >= 0


@pytest.mark.parametrize("name", list_builders())
def test_deterministic_for_a_fixed_seed(
    name: str, built: dict[str, ProxySet], data: tuple[Split, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path))  # an empty cache: everything is recomputed
    again = _builder(name).build(data[0])
    assert torch.equal(again.images, built[name].images)
    assert again.manifest.content_hash == built[name].manifest.content_hash


@pytest.mark.parametrize("name", list_builders())
def test_save_load_round_trip(name: str, built: dict[str, ProxySet], tmp_path: Path) -> None:
    proxy = built[name]
    back = load_proxy(save_proxy(proxy, tmp_path / f"{name}.npz"))
    assert torch.equal(back.images, proxy.images) and torch.equal(back.labels, proxy.labels)
    assert back.manifest == proxy.manifest and back.id == proxy.id


@pytest.mark.parametrize("name", [n for n in list_builders() if n in SELECTION])
def test_selection_gives_unique_real_training_images(
    name: str, built: dict[str, ProxySet], data: tuple[Split, Split]
) -> None:
    proxy, train = built[name], data[0]
    indices = proxy.manifest.indices
    assert indices is not None and len(set(indices)) == len(indices) == len(proxy)
    rows = torch.tensor(indices)
    assert torch.equal(proxy.images, train.images[rows])
    assert torch.equal(proxy.labels, train.labels[rows])


@pytest.mark.parametrize("name", ["random", "kcenter"])
def test_another_seed_gives_another_selection(name: str, data: tuple[Split, Split]) -> None:
    settings = {"first_center": "random"} if name == "kcenter" else {}
    a = get_builder(name, ipc=IPC, seed=0, **{**TINY[name], **settings}).build(data[0])
    b = get_builder(name, ipc=IPC, seed=1, **{**TINY[name], **settings}).build(data[0])
    assert a.manifest.indices != b.manifest.indices


def test_tiny_settings_name_real_hyperparameters() -> None:
    for name in list_builders():
        unknown = set(TINY.get(name, {})) - set(BUILDERS[name].param_names())
        assert not unknown, f"TINY[{name!r}] names {sorted(unknown)}, not parameters of {name}; update this test"
