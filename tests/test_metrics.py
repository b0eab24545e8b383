"""Metrics against scipy on hand-made tables, top-k sets, intervals, picks and costs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas_proxy.errors import NasProxyError
from nas_proxy.metrics import (
    DIVERGED_ACCURACY,
    _kendall_rows,
    _spearman_rows,
    bootstrap_interval,
    candidate_scores,
    compare,
    correlation,
    interval_union_seconds,
    paired_difference,
    paired_differences,
    pick,
    top_k_ids,
    topk_size,
)

IDS = [f"a{i}" for i in range(8)]
TRUTH = pd.Series([0.90, 0.85, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30], index=IDS)
PROXY = pd.Series([0.50, 0.60, 0.40, 0.45, 0.20, 0.30, 0.10, 0.15], index=IDS)


def test_correlations_equal_scipy_on_hand_made_table() -> None:
    x, y = PROXY.to_numpy(), TRUTH.to_numpy()
    assert correlation(x, y, "spearman") == pytest.approx(stats.spearmanr(x, y).statistic)
    assert correlation(x, y, "kendall") == pytest.approx(stats.kendalltau(x, y).statistic)
    # By hand: proxy ranks (8=best) 7 8 5 6 3 4 1 2 vs truth 8..1: d^2 sums to 8 -> rho = 1 - 6*8/(8*63).
    assert correlation(x, y, "spearman") == pytest.approx(1 - 6 * 8 / (8 * 63))


def test_correlation_handles_ties_like_scipy() -> None:
    x = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 2.0, 5.0, 4.0, 4.0])
    assert correlation(x, y, "spearman") == pytest.approx(stats.spearmanr(x, y).statistic)
    assert correlation(x, y, "kendall") == pytest.approx(stats.kendalltau(x, y).statistic)


def test_correlation_undefined_is_nan() -> None:
    assert math.isnan(correlation(np.array([1.0, 2.0]), np.array([1.0, 2.0]), "spearman"))
    assert math.isnan(correlation(np.ones(5), np.arange(5.0), "kendall"))
    with pytest.raises(ValueError, match="pearson"):
        correlation(np.arange(5.0), np.arange(5.0), "pearson")


def test_topk_sizes() -> None:
    assert topk_size("all", 720) == 720
    assert topk_size("10", 720) == 10
    assert topk_size("30", 20) == 20
    assert topk_size("5%", 720) == 36
    assert topk_size("10%", 720) == 72
    assert topk_size("5%", 48) == 3  # ceil(2.4)
    for bad in ("0", "top", "-3", "150%"):
        with pytest.raises(NasProxyError, match="top-k"):
            topk_size(bad, 10)


def test_top_k_is_by_truth_with_ties_broken_by_id() -> None:
    truth = pd.Series([0.5, 0.9, 0.9, 0.1], index=["d", "c", "b", "a"])
    assert top_k_ids(truth, 2) == ["b", "c"]
    assert top_k_ids(truth, 3) == ["b", "c", "d"]


def test_compare_topk_matches_scipy_on_the_subset() -> None:
    # min_topk=1: the arithmetic on a subset of 4 (the default floor of 10 reports n/a there).
    cmp = compare(PROXY, TRUTH, topk=("all", "4", "50%"), n_boot=50, seed=0, min_topk=1)
    top4 = ["a0", "a1", "a2", "a3"]
    want = stats.spearmanr(PROXY[top4], TRUTH[top4]).statistic
    assert cmp.correlations[("spearman", "4")].value == pytest.approx(want)
    assert cmp.correlations[("spearman", "50%")].value == pytest.approx(want)
    assert cmp.correlations[("kendall", "4")].value == pytest.approx(
        stats.kendalltau(PROXY[top4], TRUTH[top4]).statistic
    )
    assert cmp.correlations[("spearman", "all")].value == pytest.approx(stats.spearmanr(PROXY, TRUTH).statistic)
    assert cmp.topk_sizes == {"all": 8, "4": 4, "50%": 4}
    assert cmp.n == 8
    # The proxy's best is a1 (0.60): whole-data 0.85, best 0.90 -> regret 0.05.
    assert cmp.picks == ("a1",)
    assert cmp.performance == pytest.approx(0.85)
    assert cmp.regret == pytest.approx(0.05)


def test_compare_uses_candidates_present_in_both() -> None:
    proxy = PROXY.drop(["a0"])
    proxy["zzz"] = 0.99  # not in the ground truth: ignored
    cmp = compare(proxy, TRUTH, topk=("all",), n_boot=20)
    ids = IDS[1:]
    assert cmp.n == 7
    assert cmp.correlations[("spearman", "all")].value == pytest.approx(
        stats.spearmanr(PROXY[ids], TRUTH[ids]).statistic
    )


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    y = x + 0.5 * rng.normal(size=60)
    a = bootstrap_interval(x, y, "spearman", n_boot=300, seed=7)
    b = bootstrap_interval(x, y, "spearman", n_boot=300, seed=7)
    assert a == b
    value = correlation(x, y, "spearman")
    assert a[0] < value < a[1]
    lo, hi = bootstrap_interval(x, y, "kendall", n_boot=200, seed=7)
    assert lo < correlation(x, y, "kendall") < hi
    assert bootstrap_interval(x, y, "spearman", n_boot=300, seed=8) != a


def test_paired_difference_is_the_difference_of_correlations() -> None:
    worse = pd.Series([0.1, 0.6, 0.2, 0.5, 0.4, 0.3, 0.8, 0.7], index=IDS)
    iv = paired_difference(PROXY, worse, TRUTH, n_boot=500, seed=0)
    want = stats.spearmanr(PROXY, TRUTH).statistic - stats.spearmanr(worse, TRUTH).statistic
    assert iv.value == pytest.approx(want)
    assert iv.low <= iv.value <= iv.high
    assert iv == paired_difference(PROXY, worse, TRUTH, n_boot=500, seed=0)  # seeded
    same = paired_difference(PROXY, PROXY, TRUTH, n_boot=100, seed=0)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)  # paired: no spurious spread
    kendall = paired_difference(PROXY, worse, TRUTH, "kendall", n_boot=100, seed=0)
    assert kendall.value == pytest.approx(
        stats.kendalltau(PROXY, TRUTH).statistic - stats.kendalltau(worse, TRUTH).statistic
    )


def test_paired_differences_are_compare_minus_compare_for_every_statistic() -> None:
    worse = pd.Series([0.1, 0.6, 0.2, 0.5, 0.4, 0.3, 0.8, 0.7], index=IDS)
    topk = ("all", "4", "25%", "2")
    diffs = paired_differences(PROXY, worse, TRUTH, topk=topk, n_boot=300, seed=0, min_topk=4)
    a = compare(PROXY, TRUTH, topk=topk, n_boot=0, min_topk=4)
    b = compare(worse, TRUTH, topk=topk, n_boot=0, min_topk=4)
    # Correlations below min_topk (top-2) are left out, as compare shows them n/a; overlaps are not.
    assert set(diffs) == {
        "spearman all", "kendall all", "spearman 4", "kendall 4",
        "overlap 4", "overlap 25%", "overlap 2", "regret",
    }  # fmt: skip
    for key, iv in diffs.items():
        if key == "regret":
            want = a.regret - b.regret
        elif key.startswith("overlap"):
            label = key.split()[1]
            want = a.overlaps[label].value - b.overlaps[label].value
        else:
            method, label = key.split()
            want = a.correlations[(method, label)].value - b.correlations[(method, label)].value
        assert iv.value == pytest.approx(want), key
        assert iv.low <= iv.value <= iv.high, key
    # The worse ranker picks a6 (truth 0.40): regret 0.50 more than PROXY's pick a1 (0.85, regret 0.05).
    assert diffs["regret"].value == pytest.approx(0.05 - 0.50)
    assert diffs == paired_differences(PROXY, worse, TRUTH, topk=topk, n_boot=300, seed=0, min_topk=4)
    same = paired_differences(PROXY, PROXY, TRUTH, topk=topk, n_boot=100, seed=0, min_topk=4)
    assert all((iv.value, iv.low, iv.high) == (0.0, 0.0, 0.0) for iv in same.values())  # paired: no spread
    # A candidate one ranker cannot score is left out of both.
    gap = PROXY.copy()
    gap["a7"] = np.nan
    short = paired_differences(gap, worse, TRUTH, topk=("all",), n_boot=0)
    want = stats.spearmanr(PROXY[:7], TRUTH[:7]).statistic - stats.spearmanr(worse[:7], TRUTH[:7]).statistic
    assert short["spearman all"].value == pytest.approx(want)


def test_vectorized_spearman_equals_scipy_per_resample() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, size=(20, 12)).astype(float), rng.normal(size=(20, 12))
    got = _spearman_rows(x, y)
    want = [stats.spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_vectorized_kendall_equals_scipy_per_resample() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, size=(30, 9)).astype(float), rng.integers(0, 6, size=(30, 9)).astype(float)
    x[0] = 1.0  # a constant row: undefined, NaN like scipy
    got = _kendall_rows(x, y, chunk_elements=200)  # several chunks
    want = [stats.kendalltau(a, b).statistic for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    big_x, big_y = rng.normal(size=400), rng.normal(size=400)  # the scipy-loop path agrees too
    lo, hi = bootstrap_interval(big_x, big_y, "kendall", n_boot=30, seed=0)
    assert lo < hi


def test_candidate_scores_diverged_is_zero_failed_left_out() -> None:
    rows = pd.DataFrame(
        {
            "arch_id": ["a", "a", "b", "b", "c", "c"],
            "seed": [0, 1, 0, 1, 0, 1],
            "status": ["ok", "ok", "ok", "diverged", "failed", "failed"],
            "accuracy": [0.8, 0.6, 0.9, np.nan, np.nan, np.nan],
        }
    )
    scores = candidate_scores(rows)
    assert list(scores.index) == ["a", "b"]
    assert scores["a"] == pytest.approx(0.7)
    assert scores["b"] == pytest.approx((0.9 + DIVERGED_ACCURACY) / 2)


def test_pick_ties_average_their_ground_truth() -> None:
    scores = pd.Series({"a": 0.5, "b": 0.9, "c": 0.9})
    truth = pd.Series({"a": 0.95, "b": 0.80, "c": 0.70})
    performance, regret, picks = pick(scores, truth)
    assert picks == ("b", "c")
    assert performance == pytest.approx(0.75)
    assert regret == pytest.approx(0.20)


def test_interval_union_counts_overlaps_once() -> None:
    starts = pd.Series(["2024-01-01T00:00:00+00:00", "2024-01-01T00:00:05+00:00", "2024-01-01T00:01:00+00:00"])
    ends = pd.Series(["2024-01-01T00:00:10+00:00", "2024-01-01T00:00:12+00:00", "2024-01-01T00:01:03+00:00"])
    assert interval_union_seconds(starts, ends) == pytest.approx(15.0)


# ----------------------------------------------------------------------------- issue 16: honest top-k, seeds, curves


def test_topk_correlation_below_the_floor_is_na_and_the_overlap_speaks_instead() -> None:
    cmp = compare(PROXY, TRUTH, topk=("all", "4"), n_boot=200, seed=0)
    assert math.isnan(cmp.correlations[("spearman", "4")].value)
    assert cmp.correlations[("spearman", "4")].format() == "n/a"
    assert not math.isnan(cmp.correlations[("spearman", "all")].value)
    # By hand: true top-4 a0..a3; the proxy's top-4 by score 0.60 a1, 0.50 a0, 0.45 a3, 0.40 a2 -> all 4.
    assert cmp.overlaps["4"].value == pytest.approx(1.0)
    cmp3 = compare(PROXY, TRUTH, topk=("3",), n_boot=200, seed=0)
    # True top-3 a0 a1 a2; proxy top-3 a1 a0 a3 -> 2 of 3.
    assert cmp3.overlaps["3"].value == pytest.approx(2 / 3)
    low, high = cmp3.overlaps["3"].low, cmp3.overlaps["3"].high
    assert 0 <= low <= high <= 1 and low < high  # the resampled top sets vary: a real spread


def test_topk_overlap_bootstrap_redetermines_the_sets_in_each_resample() -> None:
    from nas_proxy.metrics import _overlap_rows, topk_overlap

    x = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # exactly reversed
    assert topk_overlap(x, t, 2, n_boot=0).value == 0.0
    # Hand-made resample: draws 0, 0, 4, 4, 4. Its top-2 by x: the two draws of item 0 (positions
    # 0, 1); by t: two draws of item 4 (positions 2, 3): overlap 0. A resample of item 2 alone: 1.
    idx = np.array([[0, 0, 4, 4, 4], [2, 2, 2, 2, 2]])
    assert _overlap_rows(x[idx], t[idx], 2).tolist() == [0.0, 1.0]
    iv = topk_overlap(x, t, 2, n_boot=500, seed=1)
    assert iv.low == 0.0 and iv.high > 0.0  # resamples with repeated items overlap by their ties
    # Identical rankings: always full overlap, and k = n has no spread at all.
    same = topk_overlap(t, t, 2, n_boot=300, seed=0)
    assert (same.value, same.low, same.high) == (1.0, 1.0, 1.0)
    assert topk_overlap(x, t, 5, n_boot=300).format() == "1.00 [1.00, 1.00]"


def test_regret_interval_picks_again_in_each_resample() -> None:
    from nas_proxy.metrics import _regret_rows, regret_interval

    x = np.array([0.9, 0.1, 0.5])
    t = np.array([0.80, 0.90, 0.85])
    assert regret_interval(x, t, n_boot=0).value == pytest.approx(0.10)
    # Resample [1, 1, 2]: pick by x is item 2 (0.5) -> truth 0.85, best 0.90 -> 0.05.
    assert _regret_rows(x[np.array([[1, 1, 2]])], t[np.array([[1, 1, 2]])]).tolist() == pytest.approx([0.05])
    iv = regret_interval(x, t, n_boot=400, seed=0)
    assert iv.low == pytest.approx(0.0) and iv.high == pytest.approx(0.10)
    abc = ["a", "b", "c"]
    cmp = compare(pd.Series(x, index=abc), pd.Series(t, index=abc), n_boot=10)
    assert cmp.regret_interval.value == pytest.approx(0.10)


def _runs(records: list[tuple[str, int, str, float, list[tuple[int, float | None]]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "arch_id": a,
                "seed": s,
                "status": st,
                "accuracy": acc,
                "curve": tuple({"step": step, "accuracy": v} for step, v in curve),
            }
            for a, s, st, acc, curve in records
        ]
    )


def test_seed_table_and_seed_to_seed_on_a_tiny_table() -> None:
    from nas_proxy.metrics import curve_steps, seed_table, seed_to_seed

    rows = _runs(
        [
            ("a", 0, "ok", 0.9, [(10, 0.5), (20, 0.9)]),
            ("a", 1, "ok", 0.7, [(10, 0.4), (20, 0.7)]),
            ("b", 0, "ok", 0.8, [(10, 0.6), (20, 0.8)]),
            ("b", 1, "ok", 0.8, [(10, 0.6), (20, 0.8)]),
            ("c", 0, "diverged", math.nan, [(10, 0.3), (20, None)]),
            ("c", 1, "ok", 0.6, [(10, 0.2), (20, 0.6)]),
            ("d", 0, "ok", 0.5, [(10, 0.1), (20, 0.5)]),
            ("d", 1, "failed", math.nan, []),
        ]
    )
    final = seed_table(rows)
    assert final.loc["a"].tolist() == [0.9, 0.7]
    assert final.loc["c"].tolist() == [0.0, 0.6]  # diverged counts 0
    assert math.isnan(final.loc["d", 1])  # failed is missing
    assert candidate_scores(rows).to_dict() == pytest.approx(final.mean(axis=1).to_dict())
    at10 = seed_table(rows, step=10)
    assert at10.loc["a"].tolist() == [0.5, 0.4]
    assert seed_table(rows, step=20).loc["c"].tolist() == [0.0, 0.6]  # a point after divergence counts 0
    assert curve_steps(rows) == [10, 20]
    # Seed 0 against seed 1 over a, b, c (d lacks seed 1): seed 0 = 0.9, 0.8, 0.0; seed 1 = 0.7, 0.8, 0.6.
    # Ranks 3 2 1 vs 2 3 1 -> rho = 1 - 6 * 2 / (3 * 8) = 0.5.
    cmp = seed_to_seed(final, topk=("all",), n_boot=50)
    assert cmp is not None and cmp.n == 3
    assert cmp.correlations[("spearman", "all")].value == pytest.approx(0.5)
    assert seed_to_seed(final[[0]], topk=("all",)) is None  # one seed: no ceiling
