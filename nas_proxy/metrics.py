"""How well a ranker agrees with the whole-data ranking: pure functions on pandas and numpy.

A *ranker* is anything that gives each candidate a score, higher meaning better: a proxy set
(mean test accuracy after training on it), early stopping, or a training-free score (parameter
count, FLOPs, zero-cost proxies). Everything here takes scores as a ``pd.Series`` indexed by
architecture id, so all rankers go through the same code.

Definitions (documented once, used everywhere):

- **Candidate accuracy** on a training source = mean test accuracy over its seeds. A *diverged*
  run (non-finite loss) counts as accuracy 0: it produced no usable network, so a user of that
  ranker would rank it last. A *failed* run (an exception: out of memory, a bug) says nothing
  about the architecture and is left out; a candidate with no run left is missing from that
  source and every comparison uses the candidates present in both rankings.
- **Top-k** = the k candidates with the highest whole-data accuracy (ties broken by id, so the
  set is deterministic). ``"10"`` is k = 10, ``"5%"`` is k = ceil(5% of n), ``"all"`` is every
  candidate. The correlation over the top-k compares the two rankings of those k candidates
  only. REFERENCE.md section 5 leaves open which k the paper used, so several are reported.
- **Interval**: percentile bootstrap (95%), resampling candidates of the compared set with
  replacement from a seeded generator; resamples where the correlation is undefined are dropped.
- **Performance** = whole-data accuracy of the candidate the ranker scores highest; when several
  tie for the top, their mean (the expected value of a random tie-break). **Regret** = best
  whole-data accuracy minus performance.
- A correlation over fewer than 3 candidates, or with a constant ranking, is NaN. Over a
  top-k set smaller than :data:`MIN_TOPK_CORRELATION` (10) it is not computed at all ("n/a"): a
  rank correlation of 3 or 5 items takes a handful of values, and its bootstrap collapses onto
  them (an interval like [-1.00, -1.00] claims a certainty that is not there).
- **Top-k overlap** (precision at k) = the share of the true top-k that the ranker also puts in
  its own top-k: what a NAS user keeping k candidates gets. By chance it is k/n on average. Its
  interval re-determines both top-k sets inside every bootstrap resample (the sets are
  statistics of the sample, not fixed labels).
- **Seeds**: a candidate's accuracy on a source is the mean over its seeds; the *seed-to-seed*
  agreement (seed A's ranking against seed B's, whole data or a proxy) is the noise ceiling a
  ranker is read against: no proxy can be expected to agree with one training run better than
  another training run of the same candidates does.
- **Learning curves**: a run may carry test accuracy at recorded steps (``RunRow.curve``); the
  same definitions apply to the accuracy at one such point (a *fidelity*).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from scipy import stats

from nas_proxy.errors import NasProxyError

DEFAULT_TOPK: tuple[str, ...] = ("all", "50%", "10", "30", "5%", "10%")
METHODS: tuple[str, ...] = ("spearman", "kendall")
DIVERGED_ACCURACY = 0.0
MIN_CANDIDATES = 3
# Smallest top-k over which a rank correlation is reported (below: n/a, the overlap speaks instead).
MIN_TOPK_CORRELATION = 10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (NaN where undefined)."""

    value: float
    low: float
    high: float

    def format(self, digits: int = 2) -> str:
        if math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def topk_size(label: str, n: int) -> int:
    """How many candidates ``label`` ("all", "10", "5%") selects out of ``n`` (at most ``n``)."""
    text = label.strip()
    if text == "all":
        return n
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError(text)
            return min(n, math.ceil(pct / 100 * n - 1e-9))
        k = int(text)
        if k < 1:
            raise ValueError(text)
        return min(n, k)
    except ValueError as exc:
        raise NasProxyError(f"top-k must be 'all', a count like 10 or a percentage like 5%, got {label!r}") from exc


def top_k_ids(truth: pd.Series, k: int) -> list[str]:
    """Ids of the ``k`` candidates with the highest ground-truth score (ties broken by id)."""
    order = sorted(truth.index, key=lambda i: (-float(truth[i]), str(i)))
    return [str(i) for i in order[:k]]


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Spearman rho or Kendall tau-b (scipy) of two equally long arrays; NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_CANDIDATES or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if method == "spearman":
        return float(stats.spearmanr(x, y).statistic)
    if method == "kendall":
        return float(stats.kendalltau(x, y).statistic)
    raise ValueError(f"unknown correlation method {method!r}; valid: {', '.join(METHODS)}")


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (average ranks, as scipy), vectorized over resamples."""
    rx = stats.rankdata(x, axis=1)
    ry = stats.rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = (rx * ry).sum(axis=1) / den
    out[den == 0] = np.nan
    return out


def _kendall_rows(x: np.ndarray, y: np.ndarray, chunk_elements: int = 4_000_000) -> np.ndarray:
    """Kendall tau-b of each row pair (as scipy), from pairwise sign matrices, in memory-bounded chunks.

    tau-b = (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)) over the n0 = n(n-1)/2
    pairs; the sign matrices are antisymmetric, so sums over all ordered pairs count each pair twice.
    """
    b, n = x.shape
    n0 = n * (n - 1) / 2
    out = np.empty(b)
    step = max(1, chunk_elements // max(n * n, 1))
    for lo in range(0, b, step):
        xs, ys = x[lo : lo + step], y[lo : lo + step]
        dx = np.sign(xs[:, :, None] - xs[:, None, :])
        dy = np.sign(ys[:, :, None] - ys[:, None, :])
        s = (dx * dy).sum(axis=(1, 2)) / 2
        ties_x = ((dx == 0).sum(axis=(1, 2)) - n) / 2
        ties_y = ((dy == 0).sum(axis=(1, 2)) - n) / 2
        den = np.sqrt((n0 - ties_x) * (n0 - ties_y))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo : lo + step] = np.where(den > 0, s / np.where(den > 0, den, 1), np.nan)
    return out


# Above this many candidates scipy's O(n log n) Kendall per resample beats the O(n^2) sign matrices.
_KENDALL_VECTOR_MAX = 150


def _correlation_rows(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """``correlation`` of each row pair of two (resamples, n) arrays, vectorized where possible."""
    if method == "spearman":
        return _spearman_rows(x, y)
    if method == "kendall" and x.shape[1] <= _KENDALL_VECTOR_MAX:
        return _kendall_rows(x, y)
    return np.array([correlation(a, b, method) for a, b in zip(x, y, strict=True)])


def _resampled(x: np.ndarray, y: np.ndarray, idx: np.ndarray, method: str) -> np.ndarray:
    """``correlation`` of every resample ``x[i], y[i]`` for the rows ``i`` of ``idx``."""
    return _correlation_rows(x[idx], y[idx], method)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of the finite ``values`` (NaN, NaN if none)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``correlation(x, y, method)``, resampling pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < MIN_CANDIDATES or n_boot < 1:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return _percentiles(_resampled(x, y, idx, method), level)


def _paired_interval(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    rows_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_boot: int,
    seed: int,
    level: float,
    value_of: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> Interval:
    """``stat(x, t) - stat(y, t)`` with a paired percentile bootstrap (one resample scores both).

    ``rows_of`` computes the statistic of each row of (resamples, n) arrays; ``value_of`` the point
    estimate where it differs from ``rows_of`` on one row (correlations: scipy's rules for NaN).
    """
    one = value_of or (lambda u, v: float(rows_of(u[None], v[None])[0]))
    value = one(x, t) - one(y, t)
    n = len(x)
    if math.isnan(value) or n_boot < 1 or n == 0:
        return Interval(value, float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    low, high = _percentiles(rows_of(x[idx], t[idx]) - rows_of(y[idx], t[idx]), level)
    return Interval(value, low, high)


def _common_finite(
    a: pd.Series, b: pd.Series, truth: pd.Series
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The candidates all three score finitely (sorted ids), and the three scores over them."""
    ok = [s[np.isfinite(s.astype(float))] for s in (a, b, truth)]
    common = sorted(set(ok[0].index) & set(ok[1].index) & set(ok[2].index))
    x, y, t = (s[common].astype(float).to_numpy() for s in (a, b, truth))
    return [str(i) for i in common], x, y, t


def _paired_correlation(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, method: str, n_boot: int, seed: int, level: float
) -> Interval:
    return _paired_interval(
        x,
        y,
        t,
        lambda u, v: _correlation_rows(u, v, method),
        n_boot,
        seed,
        level,
        value_of=lambda u, v: correlation(u, v, method),
    )


def paired_difference(
    a: pd.Series,
    b: pd.Series,
    truth: pd.Series,
    method: str = "spearman",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``corr(a, truth) - corr(b, truth)`` over the candidates all three score, with a paired bootstrap.

    Each resample draws one set of candidates and scores both rankers on it, so the interval is
    of the difference itself (their errors are correlated: same candidates, same ground truth),
    not of two independent intervals side by side.
    """
    _, x, y, t = _common_finite(a, b, truth)
    return _paired_correlation(x, y, t, method, n_boot, seed, level)


def paired_differences(
    a: pd.Series,
    b: pd.Series,
    truth: pd.Series,
    *,
    topk: Sequence[str] = DEFAULT_TOPK,
    methods: Sequence[str] = METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_topk: int = MIN_TOPK_CORRELATION,
) -> dict[str, Interval]:
    """Every statistic of :func:`compare` for ranker ``a`` minus ranker ``b``, each with a paired bootstrap.

    Keys: ``"<method> <k>"`` (a correlation over the top-k by ``truth``; left out below
    ``min_topk``, as :func:`compare` shows it n/a), ``"overlap <k>"`` and ``"regret"``. Each is
    resampled as :func:`compare` resamples it (correlations within the fixed top-k set; overlaps
    and regret over all candidates, the sets and the pick found again), one draw per resample
    shared by ``a`` and ``b``: the interval is of the difference, not of two estimates side by
    side. Positive is better for correlations and overlaps, negative for regret.
    """
    ids, x, y, t = _common_finite(a, b, truth)
    n = len(ids)
    position = {i: p for p, i in enumerate(ids)}
    out: dict[str, Interval] = {}
    for label in topk:
        k = topk_size(label, n)
        if label != "all" and k < min_topk:
            continue
        keep = np.array([position[i] for i in top_k_ids(pd.Series(t, index=ids), k)], dtype=int)
        for method in methods:
            out[f"{method} {label}"] = _paired_correlation(x[keep], y[keep], t[keep], method, n_boot, seed, level)
    for label in topk:
        k = topk_size(label, n)
        if label != "all" and 0 < k < n:
            out[f"overlap {label}"] = _paired_interval(x, y, t, partial(_overlap_rows, k=k), n_boot, seed, level)
    out["regret"] = _paired_interval(x, y, t, _regret_rows, n_boot, seed, level)
    return out


def candidate_scores(rows: pd.DataFrame) -> pd.Series:
    """Mean accuracy per architecture id over seeds: diverged runs count 0, failed runs are left out.

    ``rows`` holds the runs of one training source (columns ``arch_id``, ``status``, ``accuracy``).
    """
    kept = rows[rows["status"] != "failed"]
    acc = kept["accuracy"].where(kept["status"] == "ok", DIVERGED_ACCURACY).astype(float)
    scores = acc.groupby(kept["arch_id"]).mean()
    scores.index = scores.index.astype(str)
    scores.name = "score"
    return scores.sort_index()


@dataclass(frozen=True)
class Comparison:
    """One ranker against the ground truth."""

    n: int
    correlations: dict[tuple[str, str], Interval]  # (method, top-k label) -> interval
    topk_sizes: dict[str, int]
    performance: float  # whole-data accuracy of the ranker's pick (mean over tied picks)
    regret: float
    best: float
    picks: tuple[str, ...]
    overlaps: dict[str, Interval] = field(default_factory=dict)  # top-k label -> top-k overlap
    regret_interval: Interval = field(default_factory=lambda: Interval(float("nan"), float("nan"), float("nan")))


def pick(scores: pd.Series, truth: pd.Series) -> tuple[float, float, tuple[str, ...]]:
    """(performance, regret, picked ids): the ground truth of the top-scored candidates."""
    common = scores.index.intersection(truth.index)
    if len(common) == 0:
        return float("nan"), float("nan"), ()
    s = scores[common].astype(float)
    top = s.max()
    picked = tuple(sorted(str(i) for i in s.index[s == top]))
    performance = float(truth[list(picked)].mean())
    best = float(truth[common].max())
    return performance, best - performance, picked


def compare(
    scores: pd.Series,
    truth: pd.Series,
    *,
    topk: Sequence[str] = DEFAULT_TOPK,
    methods: Sequence[str] = METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    min_topk: int = MIN_TOPK_CORRELATION,
) -> Comparison:
    """Correlations (with intervals) over all candidates and each top-k set, top-k overlaps, and the pick's regret.

    A top-k correlation with ``k < min_topk`` is NaN (shown "n/a"); the overlap is given for
    every top-k label, with its bootstrap interval (sets re-determined in each resample).
    """
    scores = scores[np.isfinite(scores.astype(float))]
    common = sorted(set(scores.index) & set(truth.index))
    s, t = scores[common].astype(float), truth[common].astype(float)
    out: dict[tuple[str, str], Interval] = {}
    sizes: dict[str, int] = {}
    for label in topk:
        k = topk_size(label, len(common))
        sizes[label] = k
        ids = top_k_ids(t, k)
        xs, ys = s[ids].to_numpy(), t[ids].to_numpy()
        too_few = label != "all" and k < min_topk
        for method in methods:
            value = float("nan") if too_few else correlation(xs, ys, method)
            low, high = (
                bootstrap_interval(xs, ys, method, n_boot=n_boot, seed=seed)
                if not math.isnan(value)
                else (float("nan"), float("nan"))
            )
            out[(method, label)] = Interval(value, low, high)
    performance, regret, picked = pick(s, t)
    best = float(t.max()) if len(t) else float("nan")
    xs_all, ts_all = s.to_numpy(), t.to_numpy()
    overlaps = {
        label: topk_overlap(xs_all, ts_all, sizes[label], n_boot=n_boot, seed=seed) for label in topk if label != "all"
    }
    regret_iv = regret_interval(xs_all, ts_all, n_boot=n_boot, seed=seed)
    return Comparison(len(common), out, sizes, performance, regret, best, picked, overlaps, regret_iv)


def _top_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (same shape) of the k largest of each row; ties broken by position (lower first)."""
    order = np.argsort(-values, axis=-1, kind="stable")
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :k], True, axis=-1)
    return mask


def _overlap_rows(x: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """Share of each row's true top-k (by ``t``) that is also in its top-k by ``x``."""
    return np.asarray((_top_mask(x, k) & _top_mask(t, k)).sum(axis=-1) / k, dtype=float)


def topk_overlap(
    x: np.ndarray, t: np.ndarray, k: int, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Top-k overlap (precision at k) of scores ``x`` against truth ``t``, with a percentile bootstrap.

    Each resample draws n candidates with replacement and finds both top-k sets again in it (a
    candidate drawn twice counts as two entries; ties go to the earlier draw), so the interval
    covers the uncertainty of which candidates are on top, not only of their order.
    """
    x, t = np.asarray(x, dtype=float), np.asarray(t, dtype=float)
    n = len(x)
    if n == 0 or k < 1 or k > n:
        return Interval(float("nan"), float("nan"), float("nan"))
    # The point estimate ties by id order (the caller's sort), as top_k_ids does.
    value = float(_overlap_rows(x[None], t[None], k)[0])
    if n_boot < 1 or k == n:  # k = n: every candidate is in both sets, no spread at all
        return Interval(value, value if k == n else float("nan"), value if k == n else float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    low, high = _percentiles(_overlap_rows(x[idx], t[idx], k), level)
    return Interval(value, low, high)


def regret_interval(
    x: np.ndarray, t: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Regret of the pick (best truth minus the truth of the top-scored, tied picks averaged), bootstrapped.

    Each resample picks again among the candidates it drew, and compares with its own best.
    """
    x, t = np.asarray(x, dtype=float), np.asarray(t, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    value = _regret_rows(x[None], t[None])[0]
    if n_boot < 1:
        return Interval(float(value), float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    low, high = _percentiles(_regret_rows(x[idx], t[idx]), level)
    return Interval(float(value), low, high)


def _regret_rows(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    top = x == x.max(axis=-1, keepdims=True)
    picked = (t * top).sum(axis=-1) / top.sum(axis=-1)
    return np.asarray(t.max(axis=-1) - picked, dtype=float)


def seed_table(rows: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Accuracy per architecture (rows) and seed (columns) of one source's runs.

    ``step``: the accuracy recorded at that step of each run's learning curve instead of the
    final one (a run without that point is missing). Diverged runs, and curve points recorded
    after a divergence, count :data:`DIVERGED_ACCURACY`; failed runs are missing.
    """
    records = []
    for rec in rows[rows["status"] != "failed"].to_dict("records"):
        if step is None:
            acc = rec["accuracy"] if rec["status"] == "ok" else DIVERGED_ACCURACY
        else:
            point = next((p for p in rec.get("curve") or () if int(p["step"]) == step), None)
            if point is None:
                continue
            acc = DIVERGED_ACCURACY if point.get("accuracy") is None else point["accuracy"]
        records.append((str(rec["arch_id"]), int(rec["seed"]), float(acc)))
    table = pd.DataFrame(records, columns=["arch_id", "seed", "accuracy"])
    wide = table.pivot_table(index="arch_id", columns="seed", values="accuracy", aggfunc="mean")
    return wide.sort_index()


def curve_steps(rows: pd.DataFrame) -> list[int]:
    """The steps at which every run of ``rows`` (failed ones aside) recorded a curve point."""
    kept = rows[rows["status"] != "failed"]
    common: set[int] | None = None
    for curve in kept.get("curve", []):
        steps = {int(p["step"]) for p in curve or ()}
        common = steps if common is None else common & steps
    return sorted(common or ())


def seed_pairs(table: pd.DataFrame) -> list[tuple[int, int]]:
    """Pairs of seed columns (in order), for seed-to-seed agreement."""
    cols = [int(c) for c in table.columns]
    return [(a, b) for i, a in enumerate(cols) for b in cols[i + 1 :]]


def seed_to_seed(
    table: pd.DataFrame,
    *,
    topk: Sequence[str] = DEFAULT_TOPK,
    methods: Sequence[str] = METHODS,
    n_boot: int = 1000,
    seed: int = 0,
    min_topk: int = MIN_TOPK_CORRELATION,
) -> Comparison | None:
    """The first seed's ranking judged against the second's (the noise ceiling); None with one seed.

    Candidates missing in either seed are left out. The top-k sets are the second seed's.
    """
    pairs = seed_pairs(table)
    if not pairs:
        return None
    a, b = pairs[0]
    both = table[[a, b]].dropna()
    return compare(both[a], both[b], topk=topk, methods=methods, n_boot=n_boot, seed=seed, min_topk=min_topk)


def interval_union_seconds(starts: pd.Series, ends: pd.Series) -> float:
    """Total length of the union of [start, end] intervals: wall time while any of them ran.

    Overlapping runs (parallel workers) count once, gaps between resumed invocations not at all.
    """
    s = pd.to_datetime(starts, utc=True, format="ISO8601", errors="coerce")
    e = pd.to_datetime(ends, utc=True, format="ISO8601", errors="coerce")
    ok = s.notna() & e.notna()
    pairs = sorted(zip(s[ok], e[ok], strict=True))
    total, cur_start, cur_end = 0.0, None, None
    for a, b in pairs:
        if cur_end is None or a > cur_end:
            if cur_end is not None and cur_start is not None:
                total += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = a, b
        elif b > cur_end:
            cur_end = b
    if cur_end is not None and cur_start is not None:
        total += (cur_end - cur_start).total_seconds()
    return total


@dataclass(frozen=True)
class Cost:
    """What a ranker costs: summed training (or scoring) seconds, wall seconds, storage."""

    seconds: float
    wall_seconds: float
    images: int
    bytes: int


def run_cost(rows: pd.DataFrame, images: int, nbytes: int) -> Cost:
    """Cost of a training source from its stored rows (every seed, every status)."""
    seconds = float(rows["seconds"].sum()) if len(rows) else 0.0
    wall = interval_union_seconds(rows["started_at"], rows["finished_at"]) if len(rows) else 0.0
    return Cost(seconds, wall, images, nbytes)
