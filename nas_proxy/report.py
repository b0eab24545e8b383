"""The paper-style table and figures, recomputed from a run directory's stored rows every time.

Columns: each proxy set, early stopping, the whole data, the seed-to-seed ceiling (one
whole-data training judged against another), then training-free rankers (parameter count and
FLOPs always; zero-cost scores when ``evaluate --rankers`` stored them). Rows: performance and
regret of each column's pick, Spearman and Kendall over all candidates and the top-k (with
bootstrap 95% intervals; n/a below k = 10), top-k overlaps, the share of the ceiling, time
cost, wall time and storage. With learning curves in the store, sections on the ground truth's
convergence, early stopping at several budgets, seed noise and proxy epochs follow
(:mod:`nas_proxy.fidelity`). Definitions are in :mod:`nas_proxy.metrics`; nothing here is
stored that the rows cannot reproduce.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata

from nas_proxy import fidelity as fid
from nas_proxy.errors import NasProxyError
from nas_proxy.metrics import (
    DEFAULT_TOPK,
    METHODS,
    MIN_TOPK_CORRELATION,
    Comparison,
    Cost,
    Interval,
    candidate_scores,
    compare,
    curve_steps,
    paired_differences,
    run_cost,
    seed_table,
    seed_to_seed,
    topk_size,
)
from nas_proxy.protocol import RunProtocol, SourceRecord
from nas_proxy.store import ResultsStore, open_store
from nas_proxy.zero_cost import DEFAULT_COMBINED_RANKER, baseline_scores, rank_average

KIND_ORDER = {"proxy": 0, "early": 1, "full": 2, "ceiling": 3, "ranker": 4, "combined": 5}
CEILING_ID = "ceiling:seed-to-seed"
EARLY_CURVE = "early-curve:"  # id prefix of early stopping read off the whole-data curves
# The DC paper's NAS table (Zhao, Mopuri & Bilen, ICLR 2021: CIFAR-10, 720 ConvNets, ipc 10, minutes
# on a GTX 1080 Ti), as ../shared/REFERENCE.md section 5 quotes it; its correlation is a Spearman
# over top-ranked candidates (which k is unconfirmed). Column -> (performance %, correlation,
# time cost in minutes, storage in images).
PAPER_NAS: dict[str, tuple[float, float, float, int]] = {
    "Random": (76.2, -0.21, 18.8, 100),
    "Herding": (76.2, -0.20, 18.8, 100),
    "DC": (84.5, 0.79, 18.8, 100),
    "Early-stopping": (84.5, 0.42, 18.8, 50_000),
    "Whole dataset": (85.9, 1.00, 8604.3, 50_000),
}


@dataclass(frozen=True)
class Column:
    """One ranker of the table: its per-candidate scores, what it cost, and how it compares."""

    id: str
    label: str
    kind: str  # "proxy" | "early" | "full" | "ranker"
    scores: pd.Series
    cost: Cost
    counts: dict[str, int]
    comparison: Comparison | None = None
    mean_accuracy: float = float("nan")
    build_seconds: float = float("nan")  # building the proxy set itself (from its manifest)
    rows: pd.DataFrame | None = None  # the stored runs behind a training column


@dataclass(frozen=True)
class Report:
    """Everything the report shows, as values: ``table`` (display strings) and ``metrics`` (numbers)."""

    run_dir: Path
    columns: tuple[Column, ...]
    truth: pd.Series | None
    topk: tuple[str, ...]
    table: pd.DataFrame
    metrics: pd.DataFrame
    protocol: RunProtocol
    notes: tuple[str, ...] = field(default=())
    # Each column's statistics minus its random proxy's, paired bootstrap: (column label, random
    # proxy's label, {statistic: interval}); keys as in nas_proxy.metrics.paired_differences.
    versus_random: tuple[tuple[str, str, dict[str, Interval]], ...] = field(default=())
    random_label: str = ""  # the reference random proxy (for columns with no ipc of their own)
    # Multi-fidelity views (empty where the store has no curves or one seed): see nas_proxy.fidelity.
    truth_fidelity: str = "final"
    convergence: pd.DataFrame = field(default_factory=pd.DataFrame)
    convergence_verdict: str = ""
    proxy_steps: int | None = None
    noise: pd.DataFrame = field(default_factory=pd.DataFrame)
    proxy_epochs: tuple[tuple[str, pd.DataFrame], ...] = field(default=())
    # Sources whose stored runs fall short of what was planned: the run is still in progress.
    incomplete: tuple[str, ...] = field(default=())

    def markdown(self) -> str:
        return _markdown(self)


def _row_label(method: str, label: str, sizes: dict[str, int]) -> str:
    name = method.capitalize()
    if label == "all":
        return f"{name} (all {sizes.get(label, '')})".replace(" )", ")")
    return f"{name} top-{label} (k={sizes.get(label, '?')})"


def _training_columns(store: ResultsStore, protocol: RunProtocol) -> list[Column]:
    frame = store.frame()
    out = []
    for sid, desc in protocol.sources.items():
        rows = frame[(frame["source_id"] == sid) & (frame["config_hash"] == desc.config_hash)]
        if rows.empty:
            continue
        counts = {s: int((rows["status"] == s).sum()) for s in ("ok", "diverged", "failed")}
        scores = candidate_scores(rows)
        cost = run_cost(rows, int(desc.images or 0), int(desc.bytes or 0))
        ok = rows[rows["status"] == "ok"]
        mean_acc = float(ok.groupby("arch_id")["accuracy"].mean().mean()) if len(ok) else float("nan")
        out.append(
            Column(
                sid,
                desc.label or sid,
                desc.kind,
                scores,
                cost,
                counts,
                mean_accuracy=mean_acc,
                build_seconds=desc.build_seconds,
                rows=rows,
            )
        )
    return out


def _ranker_columns(store: ResultsStore, protocol: RunProtocol, arch_ids: Sequence[str]) -> list[Column]:
    scores = store.scores_frame()
    out = []
    for name in dict.fromkeys(scores["ranker"]):
        rows = scores[scores["ranker"] == name]
        ok = rows[rows["status"] == "ok"]
        series = ok.groupby("arch_id")["score"].mean().astype(float)
        series.index = series.index.astype(str)
        counts = {s: int((rows["status"] == s).sum()) for s in ("ok", "overflow", "failed")}
        secs = float(rows["seconds"].sum())
        out.append(Column(f"ranker:{name}", name, "ranker", series.sort_index(), Cost(secs, secs, 0, 0), counts))
    have = {c.label for c in out}
    missing = [n for n in ("params", "flops") if n not in have]
    p = protocol
    if missing and arch_ids and p.in_channels and p.image_size is not None and p.num_classes is not None:
        start = time.perf_counter()
        base = baseline_scores(list(arch_ids), p.in_channels, p.image_size, p.num_classes)
        secs = time.perf_counter() - start
        for name in missing:
            s = base[name]
            out.insert(
                missing.index(name),
                Column(
                    f"ranker:{name}",
                    name,
                    "ranker",
                    s.sort_index(),
                    Cost(secs / len(base), secs / len(base), 0, 0),
                    {"ok": len(s)},
                ),
            )
    return out


def _combined_columns(columns: Sequence[Column], partner: str) -> list[Column]:
    """Each proxy's accuracy rank-averaged with one zero-cost ranker fixed in advance (issue 7).

    The partner is a constant (``zero_cost.DEFAULT_COMBINED_RANKER``), never chosen by looking at
    the ground truth the column is judged against. Cost and storage are the sum of both parts.
    """
    ranker = next((c for c in columns if c.kind == "ranker" and c.label == partner), None)
    if ranker is None:
        return []
    out = []
    for c in columns:
        if c.kind != "proxy":
            continue
        combined = rank_average(c.scores.to_dict(), ranker.scores.to_dict())
        series = pd.Series(combined, dtype=float).dropna().sort_index()
        cost = Cost(
            c.cost.seconds + ranker.cost.seconds,
            c.cost.wall_seconds + ranker.cost.wall_seconds,
            c.cost.images,
            c.cost.bytes,
        )
        out.append(
            Column(
                f"combined:{c.id}+{partner}", f"{c.label} + {partner}", "combined", series, cost, {"ok": len(series)}
            )
        )
    return out


def build_report(
    run_dir: str | Path,
    *,
    topk: Sequence[str] = DEFAULT_TOPK,
    n_boot: int = 1000,
    seed: int = 0,
    rankers: bool = True,
    fidelity: int | None = None,
    min_topk: int = MIN_TOPK_CORRELATION,
) -> Report:
    """Recompute every figure of the table from the rows stored in ``run_dir``.

    ``fidelity``: judge against the whole-data accuracy after this many epochs, read off the
    runs' learning curves, instead of their final accuracy (default: the store's
    ``truth_fidelity`` if ``evaluate --fidelity`` set one, else final). ``min_topk``: the
    smallest top-k over which a correlation is shown (:data:`nas_proxy.metrics.MIN_TOPK_CORRELATION`).
    """
    store = open_store(run_dir)
    protocol = store.load_protocol() or RunProtocol()
    columns = _training_columns(store, protocol)
    if not columns:
        raise NasProxyError(f"{store.root} holds no finished training runs yet")
    notes: list[str] = []
    full = next((c for c in columns if c.kind == "full"), None)
    full_source, full_config = protocol.source("full"), protocol.config("full")
    per_epoch = full_source.steps_per_epoch if full_source is not None else None
    if fidelity is None and protocol.truth_fidelity is not None:
        fidelity = protocol.truth_fidelity
    truth_label = "final"
    if fidelity is not None and full_config is not None and fidelity == full_config.epochs:
        fidelity = None  # the last epoch is the final accuracy itself
    if full is not None and fidelity is not None:
        full = _at_fidelity(full, fidelity, per_epoch, store.root)
        columns = [full if c.kind == "full" else c for c in columns]
        truth_label = f"epoch {fidelity}"
    truth = full.scores if full is not None else None
    if full is not None and full.rows is not None:
        truth_step = fidelity * per_epoch if fidelity is not None and per_epoch else None
        ceiling = _ceiling_column(full, truth_step, topk, n_boot, seed, min_topk)
        if ceiling is not None:
            columns.append(ceiling)
            budgets = full_config.curve_steps if full_config is not None else []
            steps = _proxy_steps(protocol)
            columns += _early_curve_columns(full, budgets, truth_step, steps, topk, n_boot, seed, min_topk)
        else:
            notes.append("one whole-data seed only: no seed-to-seed ceiling (train --seeds 0 1 for one)")
    arch_ids = sorted({i for c in columns for i in c.scores.index})
    if rankers:
        columns += _ranker_columns(store, protocol, list(truth.index) if truth is not None else arch_ids)
        columns += _combined_columns(columns, DEFAULT_COMBINED_RANKER)
    if truth is None:
        notes.append(
            "no whole-data runs in this store: correlations and performance need `evaluate --full` "
            "or `--ground-truth FILE`"
        )
    partial = incomplete_sources(protocol, store.frame())
    compared = [
        c
        if c.comparison is not None
        else replace(
            c,
            comparison=compare(c.scores, truth, topk=topk, n_boot=n_boot, seed=seed, min_topk=min_topk)
            if truth is not None
            else None,
        )
        for c in columns
    ]
    compared.sort(key=lambda c: KIND_ORDER.get(c.kind, 9))  # stable: keeps source order within a kind
    labels = _unique_labels(compared)
    table = _display_table(compared, labels, tuple(topk))
    metrics = _metrics_frame(compared, labels, tuple(topk))
    versus: list[tuple[str, str, dict[str, Interval]]] = []
    random_label = ""
    reference, bases = _random_baselines(compared, protocol)
    if reference is not None and truth is not None:
        random_label = labels[compared.index(reference)]
        for c, label in zip(compared, labels, strict=True):
            base = bases.get(c.id, reference)
            # Seed-crossed columns are judged against one seed, not the seed mean: no paired difference.
            if base is c or c.kind in ("full", "ceiling") or c.id.startswith(EARLY_CURVE):
                continue
            diffs = paired_differences(
                c.scores, base.scores, truth, topk=topk, n_boot=n_boot, seed=seed, min_topk=min_topk
            )
            versus.append((label, labels[compared.index(base)], diffs))
    convergence, verdict = pd.DataFrame(), ""
    if full is not None and full.rows is not None:
        convergence = fid.convergence_table(full.rows, per_epoch, n_boot=n_boot, seed=seed)
        verdict = fid.converged(convergence)[1] if not convergence.empty else ""
    noise_records, epochs = [], []
    for c, label in zip(compared, labels, strict=True):
        if c.rows is None or c.kind not in ("proxy", "full"):
            continue
        noise_records.append({"column": label, **fid.seed_noise(c.rows, truth, n_boot=n_boot, seed=seed)})
        if c.kind == "proxy" and truth is not None:
            source = protocol.source(c.id)
            per = source.steps_per_epoch if source is not None else None
            curve = fid.proxy_epoch_table(c.rows, truth, per, n_boot=n_boot, seed=seed)
            if not curve.empty:
                epochs.append((label, curve))
    return Report(
        store.root,
        tuple(compared),
        truth,
        tuple(topk),
        table,
        metrics,
        protocol,
        tuple(notes),
        tuple(versus),
        random_label,
        truth_label,
        convergence,
        verdict,
        _proxy_steps(protocol),
        pd.DataFrame.from_records(noise_records),
        tuple(epochs),
        tuple(partial),
    )


def incomplete_sources(protocol: RunProtocol, frame: pd.DataFrame) -> list[str]:
    """One line per training source with fewer stored runs than its invocations planned.

    Planned = the most candidates x seeds any invocation asked of the source. A report of such a
    store describes a run still in progress: its figures are not final.
    """
    out = []
    for sid, want in protocol.planned():
        desc = protocol.source(sid) or SourceRecord()
        have = int(((frame["source_id"] == sid) & (frame["config_hash"] == desc.config_hash)).sum())
        if have < want:
            out.append(f"{desc.label or sid}: {have} of {want} planned runs stored")
    return out


def _at_fidelity(full: Column, epoch: int, per_epoch: int | None, where: Path) -> Column:
    """The whole-data column with each run's accuracy at ``epoch`` (from its learning curve)."""
    assert full.rows is not None
    if per_epoch is None:
        raise NasProxyError(f"{where}: the protocol does not say the whole data's size; cannot find epoch {epoch}")
    step = epoch * per_epoch
    table = seed_table(full.rows, step=step)
    if table.empty:
        have = curve_steps(full.rows)
        valid = ", ".join(f"{s / per_epoch:g}" for s in have if s % per_epoch == 0) or "none recorded"
        raise NasProxyError(f"{where}: the whole-data runs recorded no curve point at epoch {epoch}; valid: {valid}")
    scores = table.mean(axis=1)
    scores.name = "score"
    return replace(full, scores=scores, label=f"{full.label} (epoch {epoch})")


def _ceiling_column(
    full: Column, step: int | None, topk: Sequence[str], n_boot: int, seed: int, min_topk: int
) -> Column | None:
    """Seed A's whole-data ranking judged against seed B's (at the truth's fidelity): what no proxy should beat."""
    assert full.rows is not None
    table = seed_table(full.rows, step=step)
    cmp = seed_to_seed(table, topk=topk, n_boot=n_boot, seed=seed, min_topk=min_topk)
    if cmp is None:
        return None
    a, b = (int(c) for c in table.columns[:2])
    rows = full.rows[full.rows["seed"] == a]
    cost = run_cost(rows, full.cost.images, full.cost.bytes)
    return Column(
        CEILING_ID,
        f"seed to seed (whole data, seed {a} vs {b})",
        "ceiling",
        table[a].dropna(),
        cost,
        {s: int((rows["status"] == s).sum()) for s in ("ok", "diverged", "failed")},
        comparison=cmp,
        mean_accuracy=float(table[a].mean()),
    )


def _early_curve_columns(
    full: Column,
    budgets: Sequence[int],
    truth_step: int | None,
    proxy_steps: int | None,
    topk: Sequence[str],
    n_boot: int,
    seed: int,
    min_topk: int,
) -> list[Column]:
    """Early stopping read off the whole-data learning curves, one column per recorded step budget.

    Seed A's run stopped after ``step`` SGD steps is judged against seed B's accuracy at the
    truth's fidelity, never against its own end (which shares its weights and batch order).
    Its cost is seed A's training time up to that step; its storage the whole training set.
    """
    assert full.rows is not None
    final = seed_table(full.rows, step=truth_step)
    if final.shape[1] < 2:
        return []
    a, b = (int(c) for c in final.columns[:2])
    rows_a = full.rows[full.rows["seed"] == a]
    end = truth_step or int(full.rows["steps"].max())
    out = []
    for step in sorted(int(s) for s in budgets):
        if step >= end:
            continue
        at = seed_table(full.rows, step=step)
        if at.empty or a not in at.columns:
            continue
        both = pd.concat([at[a].rename("a"), final[b].rename("b")], axis=1).dropna()
        cmp = compare(both["a"], both["b"], topk=topk, n_boot=n_boot, seed=seed, min_topk=min_topk)
        frac = (step / rows_a["steps"].clip(lower=1)).clip(upper=1.0)
        secs = float((rows_a["seconds"] * frac).sum())
        times = f", {step / proxy_steps:.3g}x a proxy run" if proxy_steps else ""
        out.append(
            Column(
                f"{EARLY_CURVE}{step}",
                f"early stopping {step} steps{times} (seed {a} vs {b})",
                "early",
                both["a"],
                Cost(secs, math.nan, full.cost.images, full.cost.bytes),
                {"ok": len(both)},
                comparison=cmp,
                mean_accuracy=float(at[a].mean()),
            )
        )
    return out


def _proxy_steps(protocol: RunProtocol) -> int | None:
    """SGD steps of one proxy run (the unit of the early-stopping budgets), if any proxy is stored."""
    for desc in protocol.sources.values():
        if desc.kind == "proxy":
            per, epochs = desc.steps_per_epoch, desc.epochs
            if per and epochs:
                return per * epochs
    return None


def _random_baselines(columns: Sequence[Column], protocol: RunProtocol) -> tuple[Column | None, dict[str, Column]]:
    """The reference random proxy, and the random proxy each proxy (or proxy + ranker) column meets.

    A proxy meets the random proxy of its own ipc, where there is one: size alone moves the
    correlation, so a 10-image-per-class set is not measured against a 50-image one. Every other
    column (rankers, early stopping, proxies of an ipc with no random set) meets the reference:
    the random proxy of the ipc most proxies use (the larger on a tie). A random proxy maps to
    itself. (None, {}) when no random proxy is stored.
    """
    meta = {sid: s.meta for sid, s in protocol.sources.items()}

    def ipc(c: Column) -> int:
        return int(meta.get(c.id, {}).get("ipc") or 0)

    proxies = [c for c in columns if c.kind == "proxy"]
    randoms = {ipc(c): c for c in proxies if meta.get(c.id, {}).get("method") == "random"}
    if not randoms:
        return None, {}
    sizes = [ipc(c) for c in proxies]
    reference = randoms[max(randoms, key=lambda i: (sizes.count(i), i))]
    own = {c.id: randoms[ipc(c)] for c in proxies if ipc(c) in randoms}
    for c in columns:
        part = c.id.removeprefix("combined:").rsplit("+", 1)[0]
        if c.kind == "combined" and part in own:
            own[c.id] = own[part]
    return reference, own


def _unique_labels(columns: Sequence[Column]) -> list[str]:
    labels = [c.label for c in columns]
    return [c.id if labels.count(c.label) > 1 and c.kind != "ranker" else c.label for c in columns]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _minutes(seconds: float) -> str:
    # Rankers cost milliseconds and the whole data hours: tiny costs show their seconds.
    if math.isnan(seconds):
        return "n/a"
    minutes = seconds / 60
    return f"{minutes:.2f}" if minutes >= 0.01 or seconds == 0 else f"<0.01 ({seconds:.2g} s)"


def _fmt_count(n: float) -> str:
    if n <= 0:
        return "0"
    exp = math.floor(math.log10(n))
    mant = n / 10**exp
    return f"10^{exp}" if abs(mant - 1) < 1e-9 else f"{mant:.1f}x10^{exp}" if exp >= 3 else f"{n:.0f}"


def _pct_interval(iv: Interval) -> str:
    return Interval(100 * iv.value, 100 * iv.low, 100 * iv.high).format()


def _ceiling_value(columns: Sequence[Column], k: str = "all") -> float:
    ceiling = next((c for c in columns if c.kind == "ceiling" and c.comparison is not None), None)
    iv = ceiling.comparison.correlations.get(("spearman", k)) if ceiling and ceiling.comparison else None
    return iv.value if iv is not None else math.nan


def _display_table(columns: Sequence[Column], labels: Sequence[str], topk: tuple[str, ...]) -> pd.DataFrame:
    data: dict[str, list[str]] = {}
    index: list[str] = []
    ceilings = {k: _ceiling_value(columns, k) for k in ("all", "50%") if k == "all" or k in topk}
    for col, label in zip(columns, labels, strict=True):
        cmp = col.comparison
        values: dict[str, str] = {}
        values["Performance (%)"] = _pct(cmp.performance) if cmp else "n/a"
        values["Regret (%)"] = _pct_interval(cmp.regret_interval) if cmp else "n/a"
        for method in METHODS:
            for k in topk:
                name = _row_label(method, k, cmp.topk_sizes if cmp else {})
                iv = cmp.correlations[(method, k)] if cmp else Interval(float("nan"), float("nan"), float("nan"))
                values[name] = iv.format()
        for k in topk:
            if k == "all" or cmp is None or k not in cmp.overlaps:
                continue
            size = cmp.topk_sizes.get(k, 0)
            values[f"Top-{k} overlap (k={size}, chance {size / max(cmp.n, 1):.2f})"] = cmp.overlaps[k].format()
        for k, ceiling in ceilings.items():
            found = cmp.correlations.get(("spearman", k)) if cmp else None
            spearman = found.value if found is not None else math.nan
            share = spearman / ceiling if ceiling and col.kind not in ("full", "ceiling") else math.nan
            values[f"Share of the seed-to-seed ceiling (Spearman {'all' if k == 'all' else 'top half'})"] = (
                "n/a" if math.isnan(share) else f"{share:.2f}"
            )
        values["Mean accuracy (%)"] = _pct(col.mean_accuracy) if col.kind != "ranker" else "-"
        values["Time cost (min)"] = _minutes(col.cost.seconds)
        values["Wall time (min)"] = _minutes(col.cost.wall_seconds)
        values["Build time (min)"] = "-" if math.isnan(col.build_seconds) else _minutes(col.build_seconds)
        values["Storage (imgs)"] = _fmt_count(col.cost.images)
        values["Storage (MB)"] = f"{col.cost.bytes / 1e6:.2f}"
        values["Runs ok/diverged/failed"] = "/".join(
            str(col.counts.get(s, 0))
            for s in (("ok", "overflow", "failed") if col.kind == "ranker" else ("ok", "diverged", "failed"))
        )
        for key in values:
            if key not in index:
                index.append(key)
        data[label] = [values.get(k, "") for k in index]
    # Later columns may have added rows (top-k labels depend on n): align.
    frame = pd.DataFrame({lab: pd.Series(dict(zip(index, vals, strict=False))) for lab, vals in data.items()})
    return frame.reindex(index)


def _metrics_frame(columns: Sequence[Column], labels: Sequence[str], topk: tuple[str, ...]) -> pd.DataFrame:
    records = []
    for col, label in zip(columns, labels, strict=True):
        cmp = col.comparison
        rec: dict[str, Any] = {
            "column": col.id,
            "label": label,
            "kind": col.kind,
            "n": cmp.n if cmp else len(col.scores),
            "performance": cmp.performance if cmp else np.nan,
            "regret": cmp.regret if cmp else np.nan,
            "best": cmp.best if cmp else np.nan,
            "picks": " ".join(cmp.picks) if cmp else "",
            "regret_low": cmp.regret_interval.low if cmp else np.nan,
            "regret_high": cmp.regret_interval.high if cmp else np.nan,
            "mean_accuracy": col.mean_accuracy,
        }
        for method in METHODS:
            for k in topk:
                iv = cmp.correlations[(method, k)] if cmp else Interval(np.nan, np.nan, np.nan)
                stem = f"{method}_{_slug(k)}"
                rec[stem], rec[f"{stem}_low"], rec[f"{stem}_high"] = iv.value, iv.low, iv.high
                rec[f"k_{_slug(k)}"] = cmp.topk_sizes.get(k, np.nan) if cmp else np.nan
        for k in topk:
            ov = cmp.overlaps.get(k) if cmp else None
            if ov is not None:
                stem = f"overlap_{_slug(k)}"
                rec[stem], rec[f"{stem}_low"], rec[f"{stem}_high"] = ov.value, ov.low, ov.high
        rec.update(
            seconds=col.cost.seconds, wall_seconds=col.cost.wall_seconds, images=col.cost.images, bytes=col.cost.bytes
        )
        rec.update({f"n_{s}": n for s, n in col.counts.items()})
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _slug(k: str) -> str:
    return k.replace("%", "pct")


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| | " + " | ".join(map(str, frame.columns)) + " |"
    sep = "|---|" + "---|" * len(frame.columns)
    lines = [header, sep]
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _markdown(report: Report) -> str:
    p = report.protocol
    n = len(report.truth) if report.truth is not None else max((len(c.scores) for c in report.columns), default=0)
    seeds = p.seeds
    lines = [f"# nas-proxy report: {report.run_dir}", ""]
    if report.incomplete:
        lines += [
            "**PARTIAL: this run is still in progress; no figure below is final.** "
            + "; ".join(report.incomplete)
            + ". Rerun the same `nas-proxy evaluate` command to finish it.",
            "",
        ]
    lines.append(
        f"Dataset **{p.dataset}**, space **{p.space}**, {n} candidates, training seeds "
        f"{', '.join(map(str, seeds)) or '?'}; "
        + "; ".join(
            f"{kind}: {c.values.get('epochs')} epochs (batch {c.values.get('batch_size')}, lr {c.values.get('lr')})"
            for kind, c in p.configs.items()
        )
        + "."
    )
    lines += ["", _markdown_table(report.table), ""]
    lines += [
        "Performance: whole-data test accuracy of the candidate the column ranks first (mean over tied picks); "
        "regret: best whole-data accuracy minus that. Correlations: Spearman rho / Kendall tau-b between the "
        "column's scores and whole-data accuracy, over all candidates and over the top-k by whole-data accuracy, "
        "with percentile-bootstrap 95% intervals (candidates resampled). A diverged run counts as accuracy 0; "
        "failed runs (and a ranker's failed or overflowing scores) are left out. Time cost: summed training "
        "seconds (scoring seconds for rankers); wall time: time while any of the column's runs was going; build "
        "time: making the proxy set, not included in time cost. Rankers need no training and store nothing. "
        "'<proxy> + synflow': the mean of the proxy's accuracy rank and synflow's rank, synflow fixed in advance "
        "from the literature (never picked on this ground truth); its cost is the sum of both.",
    ]
    lines += [f"\nNote: {note}" for note in report.notes]
    lines += _paper_section(report)
    lines += _versus_random_section(report)
    lines += _fidelity_sections(report)
    return "\n".join(lines) + "\n"


def _paper_columns(report: Report) -> dict[str, tuple[str, Column]]:
    """Our column for each column of the paper's NAS table, by the paper's heading: (our label, column).

    Random, herding and DC: the proxy of that method at the reference random proxy's ipc (the
    size most proxies have). Early stopping: whole-data training for as many SGD steps as one
    proxy run (the paper's definition), read off the curves or trained on its own. Whole data
    and the seed-to-seed ceiling as they are. A column with no counterpart stored is left out.
    """
    labels = _unique_labels(report.columns)
    meta = {sid: s.meta for sid, s in report.protocol.sources.items()}
    ref_ipc = next(
        (
            meta.get(c.id, {}).get("ipc")
            for c, lab in zip(report.columns, labels, strict=True)
            if lab == report.random_label
        ),
        None,
    )
    out: dict[str, tuple[str, Column]] = {}
    for c, label in zip(report.columns, labels, strict=True):
        if c.comparison is None:
            continue
        m = meta.get(c.id, {})
        if c.kind == "proxy" and m.get("ipc") == ref_ipc:
            heading = {"random": "Random", "herding": "Herding", "dc": "DC"}.get(str(m.get("method")))
            if heading is not None:
                out.setdefault(heading, (label, c))
        elif c.kind == "early":
            at_proxy_steps = c.id == f"{EARLY_CURVE}{report.proxy_steps}"
            if at_proxy_steps or (not c.id.startswith(EARLY_CURVE) and "Early-stopping" not in out):
                out["Early-stopping"] = (label, c)
        elif c.kind == "full":
            out["Whole dataset"] = (label, c)
        elif c.kind == "ceiling":
            out["Seed to seed (ours only)"] = (label, c)
    order = [*PAPER_NAS, "Seed to seed (ours only)"]
    return {h: out[h] for h in order if h in out}


def _paper_section(report: Report) -> list[str]:
    cols = _paper_columns(report)
    if "Whole dataset" not in cols or not ({"Random", "Herding", "DC"} & set(cols)):
        return []
    n = len(report.truth) if report.truth is not None else 0

    def row(i: int, paper_fmt: Callable[[float], str], ours: Callable[[Column], str]) -> list[str]:
        # "ours (paper's)"; the ceiling has no counterpart in the paper, nor a pick or a cost of its own.
        return [f"{ours(c)} ({paper_fmt(PAPER_NAS[h][i]) if h in PAPER_NAS else '-'})" for h, (_, c) in cols.items()]

    def spearman(k: str) -> Callable[[Column], str]:
        def cell(c: Column) -> str:
            iv = c.comparison.correlations.get(("spearman", k)) if c.comparison else None
            return iv.format() if iv is not None else "n/a"

        return cell

    def performance(c: Column) -> str:
        return _pct(c.comparison.performance) if c.comparison is not None and c.kind != "ceiling" else "-"

    def minutes(c: Column) -> str:
        return _minutes(c.cost.seconds) if c.kind != "ceiling" else "-"

    rows = [("Performance (%): whole-data accuracy of the pick", row(0, lambda v: f"{v:.1f}", performance))]
    for k in ["all", *(k for k in ("30", "10") if k in report.topk)]:
        name = f"Correlation: Spearman, all {n}" if k == "all" else f"Correlation: Spearman, top {topk_size(k, n)}"
        rows.append((name, row(1, lambda v: f"{v:.2f}", spearman(k))))
    rows.append(("Time cost (min)", row(2, lambda v: f"{v:.1f}", minutes)))
    rows.append(("Storage (imgs)", row(3, _fmt_count, lambda c: _fmt_count(c.cost.images))))
    lines = [
        "",
        "## Beside the paper's NAS table",
        "",
        f"Ours, with the paper's CIFAR-10 figure in brackets. Ours: {n} candidates of {report.protocol.space} on "
        f"{report.protocol.dataset}, seeds averaged, 95% bootstrap intervals, time summed over every seed's "
        "runs on this machine. The paper's: 720 ConvNets on CIFAR-10, minutes on one GTX 1080 Ti, its correlation "
        "a Spearman over top-ranked candidates of unconfirmed k (so it sits beside each of ours). Columns: "
        + "; ".join(f"{h} = {label}" for h, (label, _) in cols.items())
        + ".",
        "",
        "| | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return lines


# The statistics the "against random" table shows, where computed: (key, column heading).
VERSUS_SHOWN: tuple[tuple[str, str], ...] = (
    ("spearman all", "Spearman all"),
    ("kendall all", "Kendall all"),
    ("spearman 50%", "Spearman top half"),
    ("kendall 50%", "Kendall top half"),
    ("spearman 30", "Spearman top 30"),
    ("overlap 5%", "top-5% overlap"),
    ("overlap 10%", "top-10% overlap"),
    ("regret", "regret (points)"),
)


def _versus_random_section(report: Report) -> list[str]:
    if not report.versus_random:
        return []
    keys = [(k, h) for k, h in VERSUS_SHOWN if any(k in d for _, _, d in report.versus_random)]
    lines = [
        "",
        f"## Against the random proxy ({report.random_label})",
        "",
        "Each statistic of the column minus the same statistic of a random proxy, with a paired bootstrap "
        "95% interval (one resample of candidates scores both, so the interval is of the difference). A proxy "
        "meets the random proxy of its own ipc; rankers and proxies of another size meet "
        f"{report.random_label}. **Bold**: the interval excludes 0. Higher is better, except regret "
        "(whole-data points lost by the pick; lower is better).",
        "",
        "| column | versus | " + " | ".join(h for _, h in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for label, versus, diffs in report.versus_random:
        cells = []
        for key, _ in keys:
            iv = diffs.get(key)
            if iv is None:
                cells.append("n/a")
                continue
            if key == "regret":
                iv = Interval(100 * iv.value, 100 * iv.low, 100 * iv.high)
            text = iv.format()
            sure = not math.isnan(iv.low) and (iv.low > 0 or iv.high < 0)
            cells.append(f"**{text}**" if sure else text)
        lines.append(f"| {label} | {versus} | " + " | ".join(cells) + " |")
    return lines


def _iv(value: float, low: float, high: float) -> str:
    return Interval(value, low, high).format()


def _cross(record: dict[str, Any], stem: str) -> str:
    return _iv(record[f"cross_{stem}"], record[f"cross_{stem}_low"], record[f"cross_{stem}_high"])


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _fidelity_sections(report: Report) -> list[str]:
    """Markdown for the ground truth's convergence, early stopping as a curve, seed noise, proxy epochs."""
    lines: list[str] = []
    conv = report.convergence
    if report.truth_fidelity != "final":
        lines += ["", f"Ground truth: whole-data accuracy at **{report.truth_fidelity}** (read off the curves)."]
    if not conv.empty:
        unit = report.proxy_steps
        lines += [
            "",
            "## The ground truth: convergence, and early stopping at every budget",
            "",
            "Each row is one recorded fidelity of the whole-data runs. *Same runs*: the seed-averaged ranking "
            "at that point against the seed-averaged final ranking (has the ranking stopped moving?). "
            "*Seed-crossed*: seed A's run stopped there against seed B's final accuracy, i.e. early stopping "
            "at that budget judged against an independent full training (a run is never judged against its own "
            "end, which shares its initial weights and batch order); at the final row this is the seed-to-seed "
            "ceiling. Cost: seed A's training time for every candidate up to that step.",
            "",
            "| epoch | steps | x proxy run | same runs: Spearman all | Kendall all | Spearman top half | "
            "Kendall top half | seed-crossed: Spearman all [95%] | Kendall all | Spearman top half [95%] | "
            "top-10 overlap | cost (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in conv.to_dict("records"):
            mult = f"{r['step'] / unit:.3g}" if unit else "n/a"
            lines.append(
                f"| {r['epoch']:g} | {int(r['step'])} | {mult} | {_f(r['spearman_all'])} | {_f(r['kendall_all'])} | "
                f"{_f(r['spearman_top_half'])} | {_f(r['kendall_top_half'])} | "
                f"{_cross(r, 'spearman_all')} | "
                f"{_f(r['cross_kendall_all'])} | "
                f"{_cross(r, 'spearman_top_half')} | {_f(r['cross_overlap_10'], 2)} | {_minutes(r['seconds'])} |"
            )
        lines += ["", f"Verdict: {report.convergence_verdict}."]
    if not report.noise.empty:
        lines += [
            "",
            "## Seed noise",
            "",
            "Seed to seed: Spearman of the first two training seeds' rankings of the same candidates (how noisy "
            "is one training on this source?). Single seed: the mean of each seed's own Spearman against the "
            "ground truth; averaged: the Spearman of the seed-averaged accuracy (what the main table uses).",
            "",
            "| column | seeds | seed to seed: Spearman [95%] | single seed vs ground truth | seeds averaged |",
            "|---|---|---|---|---|",
        ]
        for r in report.noise.to_dict("records"):
            lines.append(
                f"| {r['column']} | {int(r['seeds'])} | "
                f"{_iv(r['seed_to_seed'], r['seed_to_seed_low'], r['seed_to_seed_high'])} | "
                f"{_f(r.get('single_seed', math.nan), 2)} | {_f(r.get('averaged', math.nan), 2)} |"
            )
    if report.proxy_epochs:
        lines += [
            "",
            "## Proxy epochs: is 100 needed?",
            "",
            "Each proxy's ranking after training on it for the recorded number of epochs (seeds averaged), "
            "against the ground truth: Spearman over all candidates [95%] / top-10 overlap.",
            "",
        ]
        epochs = sorted({e for _, t in report.proxy_epochs for e in t["epoch"]})
        lines += ["| proxy | " + " | ".join(f"epoch {e:g}" for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
        for label, t in report.proxy_epochs:
            by = {float(r["epoch"]): r for r in t.to_dict("records")}
            cells = [
                f"{_iv(by[e]['spearman_all'], by[e]['spearman_all_low'], by[e]['spearman_all_high'])} / "
                f"{_f(by[e]['overlap_10'], 2)}"
                if e in by
                else "-"
                for e in epochs
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _scatter(col: Column, label: str, truth: pd.Series, path: Path) -> None:
    common = sorted(set(col.scores.index) & set(truth.index))
    x = col.scores[common].to_numpy(dtype=float)
    y = 100 * truth[common].to_numpy(dtype=float)
    fig = Figure(figsize=(4.2, 4.0), constrained_layout=True)
    ax = fig.add_subplot()
    if col.kind == "ranker":
        ax.scatter(rankdata(x), y, s=12, alpha=0.7)
        ax.set_xlabel(f"{label}: rank of score (1 = lowest)")
    else:
        ax.scatter(100 * x, y, s=12, alpha=0.7)
        ax.set_xlabel(f"accuracy after training on {label} (%)")
    ax.set_ylabel("whole-data accuracy (%)")
    rho = col.comparison.correlations[("spearman", "all")] if col.comparison else None
    ax.set_title(f"{label}: Spearman {rho.format()}" if rho else label, fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _cost_figure(report: Report, labels: Sequence[str], path: Path) -> None:
    fig = Figure(figsize=(7, 5), constrained_layout=True)
    ax = fig.add_subplot()
    points: list[tuple[float, float, str]] = []
    for col, label in zip(report.columns, labels, strict=True):
        if col.comparison is None or col.kind == "combined":  # combined columns: in the table only
            continue
        iv = col.comparison.correlations[("spearman", "all")]
        if math.isnan(iv.value):
            continue
        x = max(col.cost.seconds / 60, 1e-4)
        err = None if math.isnan(iv.low) else [[iv.value - iv.low], [iv.high - iv.value]]
        marker = {"proxy": "o", "early": "s", "full": "*", "ranker": "^"}.get(col.kind, "o")
        ax.errorbar([x], [iv.value], yerr=err, fmt=marker, capsize=3)
        points.append((x, iv.value, label))
    # Proxies of one ipc cost about the same: stack their labels apart instead of on top of each other.
    gap = 0.05
    placed: list[tuple[float, float]] = []
    for x, y, label in sorted(points, key=lambda p: -p[1]):
        ly = y
        for px, py in placed:
            if abs(math.log10(px) - math.log10(x)) < 0.5 and ly > py - gap:
                ly = py - gap
        placed.append((x, ly))
        ax.annotate(
            label,
            (x, y),
            xytext=(x * 1.6, ly),
            textcoords="data",
            fontsize=7,
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"},
        )
    conv = report.convergence
    if not conv.empty and "cross_spearman_all" in conv:
        ok = conv["cross_spearman_all"].notna()
        xs = (conv.loc[ok, "seconds"] / 60).clip(lower=1e-4)
        ax.plot(
            xs,
            conv.loc[ok, "cross_spearman_all"],
            "-s",
            color="grey",
            ms=3,
            lw=0.8,
            label="early stopping along the whole-data curve (seed-crossed)",
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("time cost (minutes, summed training / scoring time)")
    ax.set_ylabel("Spearman vs whole data (all candidates)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _convergence_figure(conv: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(6, 4), constrained_layout=True)
    ax = fig.add_subplot()
    x = conv["epoch"]
    ax.plot(x, conv["spearman_all"], "-o", ms=3, label="same runs vs final: Spearman, all")
    ax.plot(x, conv["spearman_top_half"], "-o", ms=3, label="same runs vs final: Spearman, top half")
    ax.plot(x, conv["cross_spearman_all"], "-s", ms=3, label="seed A here vs seed B final (early stopping)")
    ax.fill_between(x, conv["cross_spearman_all_low"], conv["cross_spearman_all_high"], alpha=0.15)
    ax.axhline(fid.CONVERGED_ALL, color="grey", lw=0.6, ls="--")
    ax.axhline(fid.CONVERGED_TOP_HALF, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("whole-data epochs (fidelity)")
    ax.set_ylabel("Spearman")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def _proxy_epochs_figure(curves: Sequence[tuple[str, pd.DataFrame]], path: Path) -> None:
    fig = Figure(figsize=(6, 4), constrained_layout=True)
    ax = fig.add_subplot()
    for label, t in curves:
        ax.plot(t["epoch"], t["spearman_all"], "-o", ms=3, label=label)
    ax.set_xlabel("epochs on the proxy")
    ax.set_ylabel("Spearman vs ground truth (all candidates)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def write_report(report: Report, out_dir: str | Path | None = None, *, figures: bool = True) -> list[Path]:
    """Write report.md, report.csv (the table), metrics.csv (every number), candidates.csv and figures."""
    out = Path(out_dir) if out_dir is not None else report.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    labels = _unique_labels(report.columns)
    md = report.markdown()
    fig_lines = []
    if figures and report.truth is not None:
        for col, label in zip(report.columns, labels, strict=True):
            if col.kind in ("full", "ceiling") or col.comparison is None or col.comparison.n == 0:
                continue
            if col.id.startswith(EARLY_CURVE):  # judged against one seed: a scatter on the mean would mislead
                continue
            path = out / f"scatter-{_safe_name(col.id)}.png"
            _scatter(col, label, report.truth, path)
            written.append(path)
            fig_lines.append(f"![{label}]({path.name})")
        path = out / "correlation_vs_cost.png"
        _cost_figure(report, labels, path)
        written.append(path)
        fig_lines.insert(0, f"![correlation vs cost]({path.name})")
        if not report.convergence.empty:
            path = out / "convergence.png"
            _convergence_figure(report.convergence, path)
            written.append(path)
            fig_lines.insert(1, f"![convergence of the ground truth]({path.name})")
        if report.proxy_epochs:
            path = out / "proxy_epochs.png"
            _proxy_epochs_figure(report.proxy_epochs, path)
            written.append(path)
            fig_lines.insert(2, f"![proxy correlation against proxy epochs]({path.name})")
    if fig_lines:
        md += "\n## Figures\n\n" + "\n".join(fig_lines) + "\n"
    paths = {"report.md": md}
    for name, text in paths.items():
        (out / name).write_text(text)
        written.append(out / name)
    report.table.to_csv(out / "report.csv", index_label="metric")
    report.metrics.to_csv(out / "metrics.csv", index=False)
    if report.versus_random:
        pd.DataFrame(
            [
                {"column": label, "versus": versus, "statistic": key, "diff": iv.value, "low": iv.low, "high": iv.high}
                for label, versus, diffs in report.versus_random
                for key, iv in diffs.items()
            ]
        ).to_csv(out / "versus_random.csv", index=False)
        written.append(out / "versus_random.csv")
    cand = pd.DataFrame({lab: c.scores for c, lab in zip(report.columns, labels, strict=True)})
    cand.index.name = "arch_id"
    cand.to_csv(out / "candidates.csv")
    written += [out / "report.csv", out / "metrics.csv", out / "candidates.csv"]
    return written
