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
    baseline_scores,
    bootstrap_interval,
    candidate_scores,
    compare,
    correlation,
    interval_union_seconds,
    paired_difference,
    pick,
    top_k_ids,
    topk_size,
)
from nas_proxy.models import build_model, count_flops, count_params

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
    cmp = compare(PROXY, TRUTH, topk=("all", "4", "50%"), n_boot=50, seed=0)
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


def test_baseline_rankers_are_params_and_flops() -> None:
    ids = ["ConvNet-D1-W4-AR-LN-AP", "ConvNet-D3-W128-AR-IN-AP"]
    base = baseline_scores(ids, 1, 28, 10)
    assert base["params"][ids[1]] == 317_706  # REFERENCE.md section 1
    assert base["params"][ids[0]] == count_params(build_model(ids[0], 1, 28, 10))
    assert base["flops"][ids[0]] == count_flops(ids[0], 1, 28, 10)
