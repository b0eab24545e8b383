"""The run protocol as typed values: JSON round trip, check, merge, and old run directories loading."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from nas_proxy.errors import NasProxyError
from nas_proxy.protocol import Invocation, RunProtocol, SourceRecord, StoredConfig
from nas_proxy.store import ResultsStore
from nas_proxy.train import TrainConfig

# Copies of the committed results/cpu-reference*/protocol.json (written before curves and
# fast options existed): they must keep loading, unchanged by a round trip.
FIXTURES = Path(__file__).parent / "fixtures" / "protocols"
OLD = sorted(FIXTURES.glob("*.json"))


def _protocol(epochs: int = 2, test_images: int = 40) -> RunProtocol:
    cfg = TrainConfig(epochs=epochs, batch_size=16, curve=(1,))
    source = SourceRecord(
        kind="proxy",
        label="random ipc2",
        dataset="synthetic",
        train_images=8,
        images=8,
        bytes=1000,
        config=cfg.fields(),
        config_hash=cfg.hash,
        meta={"method": "random", "ipc": 2},
    )
    return RunProtocol(
        dataset="synthetic",
        num_classes=4,
        in_channels=1,
        image_size=12,
        test_images=test_images,
        configs={"proxy": StoredConfig.of(cfg)},
        package_version="0.1.0",
        sources={"random-ipc2-s0-abcd": source},
        created="2024-01-01T00:00:00.000+00:00",
        invocations=(Invocation(started="t0", candidates=3, sources=("random-ipc2-s0-abcd",), seeds=(0, 1)),),
        space="tiny",
    )


def test_round_trip_through_json() -> None:
    p = _protocol()
    data = json.loads(json.dumps(p.to_json()))
    assert RunProtocol.from_json(data) == p
    assert list(data)[:7] == ["format", "dataset", "num_classes", "in_channels", "image_size", "test_images", "configs"]
    assert data["configs"]["proxy"]["hash"] == TrainConfig(epochs=2, batch_size=16, curve=(1,)).hash
    source = p.source("random-ipc2-s0-abcd")
    assert source is not None and source.steps_per_epoch == 1 and source.epochs == 2
    assert list(p.planned()) == [("random-ipc2-s0-abcd", 6)] and p.seeds == [0, 1]


@pytest.mark.parametrize("path", OLD, ids=[p.stem for p in OLD])
def test_old_protocol_files_load_and_round_trip_unchanged(path: Path, tmp_path: Path) -> None:
    data = json.loads(path.read_text())
    p = RunProtocol.from_json(data)
    assert p.to_json() == data
    assert p.dataset == "fashionmnist" and p.test_images == 10000
    full = p.config("full")
    assert full is not None and full.config().hash == full.hash  # an old config still hashes as stored
    shutil.copy(path, tmp_path / "protocol.json")
    assert ResultsStore(tmp_path).load_protocol() == p
    p.check(p, "old")  # a rerun under the same settings is accepted
    with pytest.raises(NasProxyError, match=r"holds results for test_images 10000, this run has 2000"):
        p.check(replace(p, test_images=2000), "old")


def test_check_names_the_first_mismatch() -> None:
    old = _protocol()
    with pytest.raises(NasProxyError, match=r"^x trained proxy runs under another protocol \(epochs 2 -> 3\)"):
        old.check(_protocol(epochs=3), "x")
    with pytest.raises(NasProxyError, match="holds results for test_images 40, this run has 50"):
        old.check(_protocol(test_images=50), "x")
    src = old.sources["random-ipc2-s0-abcd"]
    moved = replace(old, sources={"random-ipc2-s0-abcd": replace(src, train_images=9)})
    with pytest.raises(NasProxyError, match="had 8 training images, now 9"):
        old.check(moved, "x")


def test_merge_adds_configs_and_sources_and_keeps_the_history() -> None:
    old = _protocol()
    full_cfg = TrainConfig(epochs=5)
    asked = RunProtocol(
        dataset="synthetic",
        num_classes=4,
        in_channels=1,
        image_size=12,
        test_images=40,
        configs={"full": StoredConfig.of(full_cfg)},
        package_version="0.2.0",
        sources={"full": SourceRecord(kind="full", config_hash=full_cfg.hash)},
    )
    merged = old.merge(asked).with_invocation(Invocation(started="t1")).finished("t2")
    assert set(merged.configs) == {"proxy", "full"} and set(merged.sources) == {"random-ipc2-s0-abcd", "full"}
    assert merged.package_version == "0.2.0" and merged.created == old.created
    assert [i.started for i in merged.invocations] == ["t0", "t1"] and merged.invocations[-1].finished == "t2"
    # A file from before a setting was recorded takes it from the new run.
    assert RunProtocol().merge(asked).test_images == 40


def test_unknown_keys_survive_and_malformed_files_name_themselves(tmp_path: Path) -> None:
    data = {**_protocol().to_json(), "from_the_future": {"a": 1}}
    data["invocations"][0]["plan"] = "stacked"
    p = RunProtocol.from_json(data)
    assert p.to_json() == data
    (tmp_path / "protocol.json").write_text(json.dumps({"configs": [1, 2]}))
    with pytest.raises(NasProxyError, match=r"protocol\.json: malformed protocol"):
        ResultsStore(tmp_path).load_protocol()


def test_an_invocation_says_null_where_nothing_sized_the_workers() -> None:
    data = Invocation(started="t0", backend="dask", device="cpu").to_json()
    assert data["n_jobs"] is None and data["space"] is None and "finished" not in data
