"""The builder contract, checked over every registered builder (Optuna-style contract tests).

Every name in ``list_builders()`` is tested, installed plugins included; ``TINY`` holds the
overrides that make a build take well under a second on the tiny synthetic data. A key there that
a builder does not have fails loudly (``get_builder`` refuses it) rather than silently running the
full budget. The checks themselves live in :mod:`nas_proxy.proxies.contract`, so a plugin's author
runs the same ones (``check_builder(name, **tiny)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nas_proxy.data import Split
from nas_proxy.proxies import ProxyBuilder, ProxySet, contract, get_builder, get_builder_class, list_builders

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
IPC = contract.CONTRACT_IPC


def _builder(name: str, ipc: int = IPC, seed: int = 0) -> ProxyBuilder:
    return get_builder(name, ipc=ipc, seed=seed, **TINY.get(name, {}))


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    # 4 classes x 20 images: enough for every method, cheap for the ones that train.
    return contract.contract_data()


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
    assert builder.name == name and builder.params()["ipc"] == IPC
    contract.check_value(builder)


@pytest.mark.parametrize("name", list_builders())
def test_exactly_ipc_per_class_in_class_order(name: str, built: dict[str, ProxySet], data: tuple[Split, Split]) -> None:
    contract.check_layout(built[name], _builder(name), data[0])


@pytest.mark.parametrize("name", list_builders())
def test_deterministic_for_a_fixed_seed(name: str, built: dict[str, ProxySet], data: tuple[Split, Split]) -> None:
    contract.check_deterministic(_builder(name), data[0], built[name])


@pytest.mark.parametrize("name", list_builders())
def test_save_load_round_trip(name: str, built: dict[str, ProxySet], tmp_path: Path) -> None:
    contract.check_round_trip(built[name], tmp_path)


@pytest.mark.parametrize("name", list_builders())
def test_selection_gives_unique_real_training_images(
    name: str, built: dict[str, ProxySet], data: tuple[Split, Split]
) -> None:
    if name in SELECTION:  # ours select; a plugin may select too (its manifest's indices say so)
        assert built[name].manifest.indices is not None
    contract.check_selection(built[name], data[0])


@pytest.mark.parametrize("name", ["random", "kcenter"])
def test_another_seed_gives_another_selection(name: str, data: tuple[Split, Split]) -> None:
    settings = {"first_center": "random"} if name == "kcenter" else {}
    a = get_builder(name, ipc=IPC, seed=0, **{**TINY[name], **settings}).build(data[0])
    b = get_builder(name, ipc=IPC, seed=1, **{**TINY[name], **settings}).build(data[0])
    assert a.manifest.indices != b.manifest.indices


def test_tiny_settings_name_real_hyperparameters() -> None:
    for name in list_builders():
        unknown = set(TINY.get(name, {})) - set(get_builder_class(name).param_names())
        assert not unknown, f"TINY[{name!r}] names {sorted(unknown)}, not parameters of {name}; update this test"
