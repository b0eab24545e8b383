"""Multi-fidelity views on hand-made runs: convergence, seed-crossed early stopping, proxy epochs, seed noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas_proxy.fidelity import converged, convergence_table, proxy_epoch_table, seed_noise, steps_per_epoch

IDS = [f"ConvNet-D1-W{w}-AR-IN-AP" for w in (4, 8, 16, 32)] + [f"ConvNet-D2-W{w}-AR-IN-AP" for w in (4, 8, 16, 32)]
PER_EPOCH = 10


def _frame(acc: dict[int, np.ndarray], steps: dict[int, list[int]], final: int, seconds: float = 4.0) -> pd.DataFrame:
    """Runs of every id for each seed in ``acc`` (shape ids x points, the last point the final accuracy)."""
    records = []
    for seed, table in acc.items():
        for i, arch in enumerate(IDS):
            curve = tuple(
                {"step": s, "epoch": s / PER_EPOCH, "accuracy": float(table[i, j]), "loss": 1.0}
                for j, s in enumerate(steps[seed])
            )
            records.append(
                {
                    "arch_id": arch,
                    "seed": seed,
                    "status": "ok",
                    "accuracy": float(table[i, -1]),
                    "steps": final,
                    "seconds": seconds,
                    "curve": curve,
                }
            )
    return pd.DataFrame(records)


def test_convergence_table_by_hand() -> None:
    rng = np.random.default_rng(0)
    final0 = np.linspace(0.5, 0.9, 8)
    final1 = final0 + rng.normal(0, 0.05, 8)
    # Epoch 1: reversed ranking; epoch 2: the final ranking already (seed 0), a shuffle of it (seed 1).
    seed0 = np.stack([final0[::-1], final0, final0], axis=1)
    seed1 = np.stack([final1[::-1], final1, final1], axis=1)
    rows = _frame({0: seed0, 1: seed1}, {0: [10, 20, 30], 1: [10, 20, 30]}, final=30)
    table = convergence_table(rows, PER_EPOCH, n_boot=100)
    assert table["epoch"].tolist() == [1.0, 2.0, 3.0]  # the final point once, not twice
    mean = (seed0 + seed1) / 2
    want = stats.spearmanr(mean[:, 0], mean[:, -1]).statistic
    assert table.loc[0, "spearman_all"] == pytest.approx(want)
    assert table.loc[1, "spearman_all"] == pytest.approx(1.0)
    # Seed-crossed: seed 0 at the fidelity against seed 1's final accuracy, never against its own end.
    assert table.loc[1, "cross_spearman_all"] == pytest.approx(stats.spearmanr(seed0[:, 1], final1).statistic)
    assert table.loc[2, "cross_spearman_all"] == pytest.approx(stats.spearmanr(final0, final1).statistic)
    # Cost of stopping at a step: seed 0's seconds, scaled by the share of the run's steps.
    assert table["seconds"].tolist() == pytest.approx([8 * 4.0 / 3, 8 * 4.0 * 2 / 3, 8 * 4.0])
    assert math.isnan(table.loc[0, "spearman_top_half"])  # 8 candidates: a top half of 4 is under the floor
    ok, text = converged(table)
    assert not ok and "cannot be judged" in text


def test_converged_bar_is_the_issues() -> None:
    base = {"step": [5, 10, 20], "epoch": [1.0, 2.0, 4.0]}
    good = pd.DataFrame(
        {
            **base,
            "spearman_all": [0.5, 0.96, 1.0],
            "kendall_all": [0.4, 0.95, 1.0],
            "spearman_top_half": [0.1, 0.91, 1.0],
            "kendall_top_half": [0.1, 0.9, 1.0],
        }
    )
    ok, text = converged(good)
    assert ok and text.startswith("converged: from epoch 2 to 4")  # epoch 1 is before E/2: not judged
    bad = good.assign(kendall_top_half=[0.1, 0.85, 1.0])
    ok, text = converged(bad)
    assert not ok and "NOT converged" in text and "0.850" in text
    assert converged(pd.DataFrame())[0] is False


def test_proxy_epochs_and_seed_noise() -> None:
    truth = pd.Series(np.linspace(0.5, 0.9, 8), index=IDS)
    p0 = np.stack([np.linspace(0.9, 0.5, 8), np.linspace(0.5, 0.9, 8)], axis=1)  # epoch 10 reversed, end right
    p1 = np.stack([np.linspace(0.9, 0.5, 8), np.linspace(0.5, 0.9, 8)[[1, 0, 2, 3, 4, 5, 7, 6]]], axis=1)
    rows = _frame({0: p0, 1: p1}, {0: [10, 20], 1: [10, 20]}, final=20)
    table = proxy_epoch_table(rows, truth, 1, n_boot=50)
    assert table["epoch"].tolist() == [10.0, 20.0]
    assert table.loc[0, "spearman_all"] == pytest.approx(-1.0)
    assert table.loc[1, "spearman_all"] == pytest.approx(stats.spearmanr((p0[:, 1] + p1[:, 1]) / 2, truth).statistic)
    noise = seed_noise(rows, truth, n_boot=50)
    assert noise["seeds"] == 2
    assert noise["seed_to_seed"] == pytest.approx(stats.spearmanr(p0[:, 1], p1[:, 1]).statistic)
    singles = [stats.spearmanr(p[:, 1], truth).statistic for p in (p0, p1)]
    assert noise["single_seed"] == pytest.approx(np.mean(singles))
    one = seed_noise(rows[rows["seed"] == 0], truth, n_boot=50)
    assert one["seeds"] == 1 and math.isnan(one["seed_to_seed"])


def test_steps_per_epoch_from_a_protocol_entry() -> None:
    assert steps_per_epoch({"train_images": 60000, "config": {"batch_size": 256}}) == 235
    assert steps_per_epoch({"config": {}}) is None


def test_a_failed_verdict_names_the_statistics_that_fall_short() -> None:
    table = pd.DataFrame(
        {
            "step": [5, 10],
            "epoch": [1.0, 2.0],
            "spearman_all": [0.99, 1.0],
            "kendall_all": [0.93, 1.0],
            "spearman_top_half": [0.92, 1.0],
            "kendall_top_half": [0.80, 1.0],
        }
    )
    ok, text = converged(table)
    assert not ok
    assert "short of it: Kendall over all (0.930 < 0.95), Kendall over the top half (0.800 < 0.9)" in text
    assert "Spearman over" not in text.split("short of it:")[1]
