"""The report from a hand-made store: values against scipy, files written, columns in paper order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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


def _make_store(
    root: Path, with_full: bool = True, extra: dict[str, tuple[str, int, list[float]]] | None = None
) -> ResultsStore:
    """A tiny store; ``extra``: more proxies, source id -> (method, ipc, accuracy per candidate)."""
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
    for sid, (method, ipc, _) in (extra or {}).items():
        size = {"images": 10 * ipc, "bytes": 31_000 * ipc, "train_images": 10 * ipc}
        sources[sid] = {
            "kind": "proxy",
            "method": method,
            "ipc": ipc,
            "label": f"{method} ipc{ipc}",
            "config_hash": "p",
        }
        sources[sid].update(size)
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
    table.update({sid: ("p", accs) for sid, (_, _, accs) in (extra or {}).items()})
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
    report = build_report(tmp_path, topk=("all", "50%"), n_boot=200, seed=0, min_topk=3)
    assert report.random_label == "random ipc1"
    versus = {label: (base, diffs) for label, base, diffs in report.versus_random}
    assert "random ipc1" not in versus and "whole data" not in versus
    base = stats.spearmanr(PROXY, FULL).statistic
    assert versus["early stopping (1 steps)"][0] == "random ipc1"
    early = versus["early stopping (1 steps)"][1]
    assert early["spearman all"].value == pytest.approx(stats.spearmanr(EARLY, FULL).statistic - base)
    assert early["kendall all"].value == pytest.approx(
        stats.kendalltau(EARLY, FULL).statistic - stats.kendalltau(PROXY, FULL).statistic
    )
    assert early["spearman all"].low <= early["spearman all"].value <= early["spearman all"].high
    # Top half (3 best by whole data: D2-W8-AR, D1-W8-AR, D2-W4-AR): both rankers over those three only.
    top = [3, 1, 2]
    want = (
        stats.spearmanr([EARLY[i] for i in top], [FULL[i] for i in top]).statistic
        - stats.spearmanr([PROXY[i] for i in top], [FULL[i] for i in top]).statistic
    )
    assert early["spearman 50%"].value == pytest.approx(want)
    assert early["regret"].value == pytest.approx(0.0)  # both pick D2-W8-AR, the best
    md = report.markdown()
    assert "## Against the random proxy (random ipc1)" in md
    assert f"| early stopping (1 steps) | random ipc1 | {early['spearman all'].format()} |" in md
    csv = write_report(report, tmp_path / "out", figures=False)
    rows = pd.read_csv(next(p for p in csv if p.name == "versus_random.csv"))
    assert set(rows["statistic"]) >= {"spearman all", "kendall 50%", "overlap 50%", "regret"}


def test_a_proxy_meets_the_random_proxy_of_its_own_size(tmp_path: Path) -> None:
    # ipc 2: a random set and a DM set; ipc 1: the random set only. Size alone moves the correlation.
    random2 = [0.6, 0.7, 0.5, 0.8, 0.4, 0.45]
    dm2 = [0.7, 0.8, 0.75, 0.85, 0.3, 0.4]
    _make_store(tmp_path, extra={"random-ipc2-s0-aa": ("random", 2, random2), "dm-ipc2-s0-bb": ("dm", 2, dm2)})
    report = build_report(tmp_path, topk=("all",), n_boot=50, seed=0)
    assert report.random_label == "random ipc2"  # the size most proxies have (2 of 3)
    versus = {label: (base, diffs) for label, base, diffs in report.versus_random}
    assert versus["dm ipc2"][0] == "random ipc2"
    want = stats.spearmanr(dm2, FULL).statistic - stats.spearmanr(random2, FULL).statistic
    assert versus["dm ipc2"][1]["spearman all"].value == pytest.approx(want)
    assert versus["dm ipc2 + synflow"][0] == "random ipc2"
    assert versus["random ipc1 + synflow"][0] == "random ipc1"
    assert versus["synflow"][0] == "random ipc2"  # no size of its own: the reference
    assert "random ipc1" not in versus and "random ipc2" not in versus


def test_the_paper_table_sets_our_columns_beside_the_papers_figures(tmp_path: Path) -> None:
    herding = [0.3, 0.5, 0.45, 0.4, 0.35, 0.2]  # picks D1-W8-AR: whole data 0.85
    dc = [0.6, 0.7, 0.65, 0.8, 0.3, 0.4]  # picks D2-W8-AR: 0.90, the best
    _make_store(tmp_path, extra={"herding-ipc1-s0-cc": ("herding", 1, herding), "dc-ipc1-s0-dd": ("dc", 1, dc)})
    report = build_report(tmp_path, topk=("all", "30"), n_boot=50, seed=0)
    md = report.markdown()
    assert "## Beside the paper's NAS table" in md
    section = md.split("## Beside the paper's NAS table")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[0] == "| | Random | Herding | DC | Early-stopping | Whole dataset |"
    cells = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in table[2:]}
    assert cells["Performance (%): whole-data accuracy of the pick"] == [
        "90.00 (76.2)",  # random ipc1 picks D2-W8-AR too
        "85.00 (76.2)",
        "90.00 (84.5)",
        "90.00 (84.5)",
        "90.00 (85.9)",
    ]
    rho = stats.spearmanr(dc, FULL).statistic
    assert cells["Correlation: Spearman, all 6"][2].startswith(f"{rho:.2f} [")
    assert cells["Correlation: Spearman, all 6"][2].endswith("(0.79)")
    assert cells["Time cost (min)"][2] == "0.30 (18.8)"  # 6 runs of 3 s
    assert cells["Storage (imgs)"][4] == "600 (5.0x10^4)"
    # Without a whole-data column there is nothing to set beside the paper.
    _make_store(tmp_path / "nofull", with_full=False)
    assert "## Beside the paper" not in build_report(tmp_path / "nofull", n_boot=0).markdown()


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
