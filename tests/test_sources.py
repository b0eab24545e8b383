"""Training sources: one value for proxies, early stopping and the whole data (evaluator and search)."""

from __future__ import annotations

import pytest
from optuna.trial import FixedTrial

from nas_proxy.data import make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.proxies import get_builder
from nas_proxy.search import make_objective
from nas_proxy.sources import FULL_ID, TrainingSource, full_source, proxy_source
from nas_proxy.space import load_space
from nas_proxy.train import TrainConfig

CFG = TrainConfig(epochs=1, batch_size=16)


def test_sources_describe_themselves_and_check_their_ids() -> None:
    train, _ = make_synthetic(num_classes=4, train_per_class=4, test_per_class=2, size=12, seed=0)
    full = full_source(train, CFG)
    assert full.id == FULL_ID and full.describe()["train_images"] == len(train)
    assert full_source(train, CFG, id="synthetic-n16").id == "synthetic-n16"
    proxy = proxy_source(get_builder("random", ipc=1, seed=0).build(train), CFG)
    assert proxy.kind == "proxy" and proxy.describe()["method"] == "random"
    with pytest.raises(NasProxyError, match="bad training-source id"):
        TrainingSource("a,b", "full", train, CFG)


def test_the_search_objective_names_its_source_like_the_evaluator() -> None:
    train, test = make_synthetic(num_classes=4, train_per_class=4, test_per_class=2, size=12, seed=0)
    space = load_space("tiny")
    proxy = get_builder("random", ipc=1, seed=0).build(train)
    params = {"depth": 1, "width": 4, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}
    for source, want in ((proxy, proxy.id), (train, f"synthetic-n{len(train)}")):
        trial = FixedTrial(params)
        make_objective(source, test, space=space, epochs=1, seed=0)(trial)
        assert trial.user_attrs["source_id"] == want
