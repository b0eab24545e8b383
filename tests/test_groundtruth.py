"""Ground-truth files: one reader (with its sidecar checks) for the evaluator and the search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas_proxy.data import make_synthetic
from nas_proxy.errors import NasProxyError
from nas_proxy.evaluate import evaluate
from nas_proxy.groundtruth import export_ground_truth, load_ground_truth, sidecar_path
from nas_proxy.search import read_ground_truth
from nas_proxy.sources import full_source
from nas_proxy.space import load_space
from nas_proxy.train import TrainConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gt")
    train, test = make_synthetic(num_classes=4, train_per_class=8, test_per_class=4, size=12, seed=0)
    specs = [s.id for s in load_space("tiny").filter("ConvNet-D1-W4-*")]
    cfg = TrainConfig(epochs=1, batch_size=16)
    evaluate(specs, [full_source(train, cfg)], test, out_dir=root / "run", progress=False, space="tiny")
    return export_ground_truth(root / "run", root / "synthetic-tiny-e1.csv")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in (src, sidecar_path(src)):
        (dst / p.name).write_bytes(p.read_bytes())
    return dst / src.name


def test_search_reads_an_exported_file_through_the_checked_reader(exported: Path) -> None:
    ranks = read_ground_truth(exported)
    gt = load_ground_truth(exported)
    assert sorted(ranks.accuracy) == sorted(gt.arch_ids)
    assert ranks.dataset == "synthetic"


def test_search_refuses_an_edited_file_like_the_evaluator(exported: Path, tmp_path: Path) -> None:
    path = _copy(exported, tmp_path)
    path.write_text(path.read_text().replace("ok", "ok ", 1))
    for read in (load_ground_truth, read_ground_truth):
        with pytest.raises(NasProxyError, match="does not match the SHA-256"):
            read(path)


def test_search_refuses_a_broken_sidecar(exported: Path, tmp_path: Path) -> None:
    path = _copy(exported, tmp_path)
    meta = json.loads(sidecar_path(path).read_text())
    del meta["csv_sha256"]
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(NasProxyError, match="protocol lacks csv_sha256"):
        read_ground_truth(path)


def test_a_bare_table_ranks_but_cannot_stand_in_for_whole_data_runs(tmp_path: Path) -> None:
    path = tmp_path / "bare.csv"
    path.write_text("arch_id,accuracy\nA,0.5\nB,0.7\n")
    gt = load_ground_truth(path, bare=True)
    assert gt.bare and read_ground_truth(path).rank == {"B": 1, "A": 2}
    with pytest.raises(NasProxyError, match=r"its protocol file bare\.json is missing"):
        load_ground_truth(path)
