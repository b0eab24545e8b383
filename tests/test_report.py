"""The report from a hand-made store: values against scipy, files written, columns in paper order."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from nas_proxy.errors import NasProxyError
from nas_proxy.report import build_report, write_report
from nas_proxy.store import ResultsStore, RunRow, ScoreRow

IDS = [
    "ConvNet-D1-W4-AR-IN-AP",
    "ConvNet-D1-W8-AR-IN-AP",
    "ConvNet-D2-W4-AR-IN-AP",
    "ConvNet-D2-W8-AR-IN-AP",
    "ConvNet-D1-W4-AS-IN-AP",
    "ConvNet-D2-W8-AS-IN-AP",
]
FULL = [0.80, 0.85, 0.82, 0.90, 0.60, 0.70]
PROXY = [0.50, 0.55, 0.40, 0.60, 0.30, 0.45]
EARLY = [0.60, 0.65, 0.70, 0.75, 0.20, 0.25]


def _make_store(root: Path, with_full: bool = True) -> ResultsStore:
    store = ResultsStore(root)
    cfg = {"epochs": 2, "batch_size": 16, "lr": 0.01}
    sources = {
        "random-ipc1-s0-abcd": {
            "kind": "proxy",
            "method": "random",
            "ipc": 1,
            "label": "random ipc1",
            "config_hash": "p",
            "images": 10,
            "bytes": 31_000,
            "train_images": 10,
        },
        "early-1steps": {
            "kind": "early",
            "label": "early stopping (1 steps)",
            "config_hash": "e",
            "images": 600,
            "bytes": 1_900_000,
            "train_images": 600,
        },
    }
    if with_full:
        sources["full"] = {
            "kind": "full",
            "label": "whole data",
            "config_hash": "f",
            "images": 600,
            "bytes": 1_900_000,
            "train_images": 600,
        }
    store.write_protocol(
        {
            "dataset": "synthetic",
            "space": "tiny",
            "in_channels": 1,
            "image_size": 12,
            "num_classes": 4,
            "configs": {"proxy": cfg, "full": cfg},
            "sources": sources,
            "invocations": [{"seeds": [0]}],
        }
    )
    table = {"random-ipc1-s0-abcd": ("p", PROXY), "early-1steps": ("e", EARLY)}
    if with_full:
        table["full"] = ("f", FULL)
    t = 0
    for sid, (h, accs) in table.items():
        for arch, acc in zip(IDS, accs, strict=True):
            start, end = f"2024-01-01T00:00:{t:02d}.000+00:00", f"2024-01-01T00:00:{t + 1:02d}.000+00:00"
            store.append(RunRow(arch, sid, 0, h, "ok", acc, 3.0, 5, 100, "", "synthetic", start, end))
            t += 1
    # A stale row under another config hash is not part of any column.
    store.append(RunRow(IDS[0], "full", 0, "old", "ok", 0.01, 1.0, 5, 100, "", "synthetic"))
    store.append_scores([ScoreRow("synflow", a, 0, "ok", float(i), 0.5) for i, a in enumerate(IDS)])
    return store


def test_table_values_match_scipy_and_columns_follow_the_paper(tmp_path: Path) -> None:
    _make_store(tmp_path)
    # min_topk=1: the arithmetic over a top-3 (the default floor of 10 shows n/a there).
    report = build_report(tmp_path, topk=("all", "3"), n_boot=200, seed=0, min_topk=1)
    # Paper order (proxies, early stopping, whole data), then the training-free rankers: params and flops first.
    assert list(report.table.columns) == [
        "random ipc1",
        "early stopping (1 steps)",
        "whole data",
        "params",
        "flops",
        "synflow",
        "random ipc1 + synflow",
    ]
    m = report.metrics.set_index("column")
    assert m.loc["random-ipc1-s0-abcd", "spearman_all"] == pytest.approx(stats.spearmanr(PROXY, FULL).statistic)
    assert m.loc["early-1steps", "kendall_all"] == pytest.approx(stats.kendalltau(EARLY, FULL).statistic)
    top3 = [3, 1, 2]  # indices of the three best whole-data accuracies
    want = stats.spearmanr([PROXY[i] for i in top3], [FULL[i] for i in top3]).statistic
    assert m.loc["random-ipc1-s0-abcd", "spearman_3"] == pytest.approx(want)
    assert m.loc["full", "spearman_all"] == pytest.approx(1.0)
    assert m.loc["ranker:synflow", "spearman_all"] == pytest.approx(stats.spearmanr(range(6), FULL).statistic)
    # The proxy picks D2-W8-AR (0.60): whole-data 0.90 = the best, regret 0.
    assert m.loc["random-ipc1-s0-abcd", "performance"] == pytest.approx(0.90)
    assert m.loc["early-1steps", "regret"] == pytest.approx(0.0)
    assert m.loc["random-ipc1-s0-abcd", "seconds"] == pytest.approx(18.0)
    assert m.loc["random-ipc1-s0-abcd", "wall_seconds"] == pytest.approx(6.0)
    assert m.loc["random-ipc1-s0-abcd", "images"] == 10
    assert m.loc["full", "n_ok"] == 6  # the stale row is not counted
    assert report.table.loc["Performance (%)", "random ipc1"] == "90.00"
    low, high = m.loc["random-ipc1-s0-abcd", ["spearman_all_low", "spearman_all_high"]]
    assert low <= m.loc["random-ipc1-s0-abcd", "spearman_all"] <= high


def test_every_column_is_compared_with_the_random_proxy_by_a_paired_difference(tmp_path: Path) -> None:
    _make_store(tmp_path)
    report = build_report(tmp_path, topk=("all",), n_boot=200, seed=0)
    assert report.random_label == "random ipc1"
    versus = dict(report.versus_random)
    assert "random ipc1" not in versus and "whole data" not in versus
    base = stats.spearmanr(PROXY, FULL).statistic
    early = versus["early stopping (1 steps)"]
    assert early.value == pytest.approx(stats.spearmanr(EARLY, FULL).statistic - base)
    assert early.low <= early.value <= early.high
    md = report.markdown()
    assert "## Against the random proxy (random ipc1)" in md
    assert f"| early stopping (1 steps) | {early.format()} |" in md


def test_combined_column_rank_averages_the_proxy_with_synflow(tmp_path: Path) -> None:
    _make_store(tmp_path)
    report = build_report(tmp_path, topk=("all",), n_boot=50, seed=0)
    col = next(c for c in report.columns if c.kind == "combined")
    assert col.id == "combined:random-ipc1-s0-abcd+synflow"
    # Ranks (1 = worst): proxy [4, 5, 2, 6, 1, 3], synflow (scores 0..5) [1, 2, 3, 4, 5, 6]; mean of the two.
    want = [(p + s) / 2 for p, s in zip([4, 5, 2, 6, 1, 3], [1, 2, 3, 4, 5, 6], strict=True)]
    assert [col.scores[a] for a in IDS] == pytest.approx(want)
    m = report.metrics.set_index("column")
    assert m.loc[col.id, "spearman_all"] == pytest.approx(stats.spearmanr(want, FULL).statistic)
    assert m.loc[col.id, "images"] == 10  # storage of the proxy; the ranker stores nothing


def test_write_report_writes_tables_and_figures(tmp_path: Path) -> None:
    _make_store(tmp_path / "run")
    report = build_report(tmp_path / "run", n_boot=50)
    paths = write_report(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert {
        "report.md",
        "report.csv",
        "metrics.csv",
        "candidates.csv",
        "correlation_vs_cost.png",
        "scatter-random-ipc1-s0-abcd.png",
        "scatter-early-1steps.png",
    } <= names
    assert all(p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Performance (%) |" in md and "Spearman (all 6)" in md and "![correlation vs cost]" in md


def test_without_ground_truth_the_report_says_so(tmp_path: Path) -> None:
    _make_store(tmp_path, with_full=False)
    report = build_report(tmp_path, n_boot=10)
    assert report.truth is None
    assert "no whole-data runs" in report.markdown()
    assert report.table.loc["Spearman (all)", "random ipc1"] == "n/a"


def test_empty_store_is_an_error(tmp_path: Path) -> None:
    ResultsStore(tmp_path).write_protocol({"dataset": "synthetic"})
    with pytest.raises(NasProxyError, match="no finished training runs"):
        build_report(tmp_path)
