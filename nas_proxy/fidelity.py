"""Multi-fidelity views of a store: convergence of the ground truth, seed noise, and rankers as curves.

A run that recorded a learning curve (``RunRow.curve``) gives its test accuracy at several
points of one training: every recorded point is a *fidelity*. From the whole-data runs this
module answers three questions, each as a pure function from stored rows to a table:

- **Has the ground truth converged?** (:func:`convergence_table`) The ranking at each fidelity
  against the final one, over all candidates and the top half. The issue's bar: Spearman and
  Kendall >= 0.95 over all and >= 0.90 over the top half from E/2 to E (:func:`converged`).
- **What does early stopping buy at each budget?** The same table's *seed-crossed* columns:
  seed A's run stopped at a fidelity, judged against seed B's final accuracy. A run is never
  judged against itself: a learning curve and its own end share the initial weights and the
  batch order, which would flatter early stopping. At the final fidelity this is the
  seed-to-seed noise ceiling.
- **How many proxy epochs are needed?** (:func:`proxy_epoch_table`) Each proxy's ranking after
  10, 25, 50, ... epochs (its recorded points) against the ground truth.

Definitions of the statistics are in :mod:`nas_proxy.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from nas_proxy.metrics import Comparison, compare, curve_steps, seed_pairs, seed_table, seed_to_seed
from nas_proxy.protocol import SourceRecord

# The issue's bar for "converged" (between E/2 and E): over all candidates, and over the top half.
CONVERGED_ALL = 0.95
CONVERGED_TOP_HALF = 0.90
TOP_HALF = "50%"


def steps_per_epoch(source: Mapping[str, Any]) -> int | None:
    """SGD steps in one epoch of a source as a protocol's JSON records it (None if it does not say).

    For JSON from elsewhere; a loaded protocol's :attr:`nas_proxy.protocol.SourceRecord.steps_per_epoch`
    is the same number.
    """
    return SourceRecord.from_json(source).steps_per_epoch


def _epoch(step: int, per_epoch: int | None) -> float:
    return round(step / per_epoch, 4) if per_epoch else float("nan")


def _value(cmp: Comparison | None, method: str, label: str) -> tuple[float, float, float]:
    if cmp is None or (method, label) not in cmp.correlations:
        return (math.nan, math.nan, math.nan)
    iv = cmp.correlations[(method, label)]
    return (iv.value, iv.low, iv.high)


def convergence_table(
    full_rows: pd.DataFrame, per_epoch: int | None, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per recorded fidelity of the whole-data runs (final last).

    Columns: ``step``, ``epoch``; ``spearman_all``, ``kendall_all``, ``spearman_top_half``,
    ``kendall_top_half`` (mean over seeds at this fidelity against the mean at the end, same runs);
    ``cross_*`` (seed A at this fidelity against seed B at the end, with ``_low``/``_high``
    bootstrap bounds, and ``cross_overlap_10``: top-10 overlap); ``seconds`` (seed A's training
    time of every candidate up to this step, i.e. the cost of early stopping there); ``seeds``.
    Empty when the runs recorded no curve.
    """
    steps = curve_steps(full_rows)
    if not steps:
        return pd.DataFrame()
    final = seed_table(full_rows)
    truth = final.mean(axis=1)
    pairs = seed_pairs(final)
    final_step = int(full_rows["steps"].max())
    records = []
    for step in [*[s for s in steps if s < final_step], None]:
        at = final if step is None else seed_table(full_rows, step=step)
        s = step if step is not None else final_step
        rec: dict[str, Any] = {"step": s, "epoch": _epoch(s, per_epoch), "seeds": at.shape[1]}
        same = compare(at.mean(axis=1), truth, topk=("all", TOP_HALF), n_boot=0, seed=seed)
        for method in ("spearman", "kendall"):
            rec[f"{method}_all"] = _value(same, method, "all")[0]
            rec[f"{method}_top_half"] = _value(same, method, TOP_HALF)[0]
        cross = None
        if pairs:
            a, b = pairs[0]
            both = pd.concat([at[a].rename("a"), final[b].rename("b")], axis=1).dropna()
            cross = compare(both["a"], both["b"], topk=("all", TOP_HALF, "10"), n_boot=n_boot, seed=seed)
        for method in ("spearman", "kendall"):
            for label, name in (("all", "all"), (TOP_HALF, "top_half")):
                v, lo, hi = _value(cross, method, label)
                rec[f"cross_{method}_{name}"], rec[f"cross_{method}_{name}_low"], rec[f"cross_{method}_{name}_high"] = (
                    v,
                    lo,
                    hi,
                )
        ov = cross.overlaps.get("10") if cross is not None else None
        rec["cross_overlap_10"] = ov.value if ov is not None else math.nan
        rec["seconds"] = _cost_to(full_rows, pairs[0][0] if pairs else None, s)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _cost_to(rows: pd.DataFrame, seed: int | None, step: int) -> float:
    """Training seconds of one seed's runs had they stopped at ``step`` (time is linear in steps)."""
    kept = rows[rows["status"] != "failed"]
    if seed is not None:
        kept = kept[kept["seed"] == seed]
    if kept.empty:
        return math.nan
    frac = (step / kept["steps"].clip(lower=1)).clip(upper=1.0)
    return float((kept["seconds"] * frac).sum())


def converged(table: pd.DataFrame) -> tuple[bool, str]:
    """Whether the ranking stopped moving between E/2 and E, and a sentence that says so with figures.

    Every recorded fidelity from half the final epoch on must reach :data:`CONVERGED_ALL`
    (Spearman and Kendall, all candidates) and :data:`CONVERGED_TOP_HALF` (top half).
    """
    if table.empty:
        return False, "the whole-data runs recorded no learning curve: convergence cannot be judged"
    last = float(table["epoch"].iloc[-1])
    half = table[(table["epoch"] >= last / 2 - 1e-9)]
    worst = {c: float(half[c].min()) for c in ("spearman_all", "kendall_all", "spearman_top_half", "kendall_top_half")}
    ok = (
        worst["spearman_all"] >= CONVERGED_ALL
        and worst["kendall_all"] >= CONVERGED_ALL
        and worst["spearman_top_half"] >= CONVERGED_TOP_HALF
        and worst["kendall_top_half"] >= CONVERGED_TOP_HALF
    )
    first = float(half["epoch"].iloc[0])
    if any(math.isnan(v) for v in worst.values()):
        return False, (
            f"cannot be judged: from epoch {first:g} to {last:g} a correlation is undefined "
            "(fewer than 10 candidates in the top half, or a constant ranking)"
        )
    figures = (
        f"from epoch {first:g} to {last:g} the ranking agrees with the final one at Spearman >= "
        f"{worst['spearman_all']:.3f} and Kendall >= {worst['kendall_all']:.3f} over all candidates, "
        f"Spearman >= {worst['spearman_top_half']:.3f} and Kendall >= {worst['kendall_top_half']:.3f} "
        "over the top half"
    )
    bar = f"(the bar: {CONVERGED_ALL} over all, {CONVERGED_TOP_HALF} over the top half)"
    if ok:
        return True, f"converged: {figures} {bar}"
    # Say which statistic falls short: Kendall's tau runs well below Spearman's rho on the same
    # ranking, so a ground truth can pass on one and fail on the other.
    names = {
        "spearman_all": ("Spearman over all", CONVERGED_ALL),
        "kendall_all": ("Kendall over all", CONVERGED_ALL),
        "spearman_top_half": ("Spearman over the top half", CONVERGED_TOP_HALF),
        "kendall_top_half": ("Kendall over the top half", CONVERGED_TOP_HALF),
    }
    short = ", ".join(f"{name} ({worst[c]:.3f} < {bar_})" for c, (name, bar_) in names.items() if worst[c] < bar_)
    return False, (
        f"NOT converged by that bar: {figures} {bar}; short of it: {short}; "
        f"read the ground truth as a {last:g}-epoch one"
    )


def proxy_epoch_table(
    rows: pd.DataFrame, truth: pd.Series, per_epoch: int | None, *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One proxy source's ranking at each recorded epoch (and at its end) against ``truth``.

    Columns: ``step``, ``epoch``, ``spearman_all`` (+ ``_low``/``_high``), ``kendall_all``,
    ``spearman_top_half``, ``overlap_10``. Empty when the runs recorded no curve.
    """
    steps = curve_steps(rows)
    if not steps:
        return pd.DataFrame()
    final_step = int(rows["steps"].max())
    records = []
    for step in [*[s for s in steps if s < final_step], None]:
        table = seed_table(rows, step=step)
        s = step if step is not None else final_step
        cmp = compare(table.mean(axis=1), truth, topk=("all", TOP_HALF, "10"), n_boot=n_boot, seed=seed)
        v, lo, hi = _value(cmp, "spearman", "all")
        ov = cmp.overlaps.get("10")
        records.append(
            {
                "step": s,
                "epoch": _epoch(s, per_epoch),
                "spearman_all": v,
                "spearman_all_low": lo,
                "spearman_all_high": hi,
                "kendall_all": _value(cmp, "kendall", "all")[0],
                "spearman_top_half": _value(cmp, "spearman", TOP_HALF)[0],
                "overlap_10": ov.value if ov is not None else math.nan,
            }
        )
    return pd.DataFrame.from_records(records)


def seed_noise(
    rows: pd.DataFrame, truth: pd.Series | None, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """How noisy one source's training is, and what averaging its seeds buys.

    ``seeds``; ``seed_to_seed`` (+ ``_low``/``_high``): Spearman of the first two seeds' rankings;
    ``single_seed``: the mean over seeds of each single seed's Spearman against ``truth``;
    ``averaged``: Spearman of the seed-averaged accuracy against ``truth``.
    """
    table = seed_table(rows)
    out: dict[str, float] = {"seeds": float(table.shape[1])}
    ceiling = seed_to_seed(table, topk=("all",), n_boot=n_boot, seed=seed)
    if ceiling is not None:
        v, lo, hi = _value(ceiling, "spearman", "all")
        out.update(seed_to_seed=v, seed_to_seed_low=lo, seed_to_seed_high=hi)
    else:
        out.update(seed_to_seed=math.nan, seed_to_seed_low=math.nan, seed_to_seed_high=math.nan)
    if truth is not None:
        singles = [
            _value(compare(table[c].dropna(), truth, topk=("all",), n_boot=0), "spearman", "all")[0]
            for c in table.columns
        ]
        out["single_seed"] = float(pd.Series(singles).mean())
        out["averaged"] = _value(compare(table.mean(axis=1), truth, topk=("all",), n_boot=0), "spearman", "all")[0]
    return out
