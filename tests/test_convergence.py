"""The plateau check of ablation studies, against numpy's least squares and hand-made curves."""

import math

import numpy as np
import pytest

from marn_rec.training.ablation.convergence import (
    PLATEAU_THRESHOLD,
    plateau_rows,
    plateau_table,
    projected_gain,
    slope,
    verdict,
)
from marn_rec.training.ablation.report import report_text


def _curve(steps, values):
    return [{"step": s, "auc": v} for s, v in zip(steps, values)]


def test_slope_matches_numpy_polyfit():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1000, 12)
    y = 0.6 + 3e-5 * x + rng.normal(0, 0.002, 12)
    assert slope(list(zip(x, y))) == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
    with pytest.raises(ValueError, match="distinct"):
        slope([(1.0, 0.5), (1.0, 0.6)])


def test_projected_gain_uses_only_the_last_half():
    steps = list(range(250, 3001, 250))
    # Steep at first, then a line of 1e-5 per step over the last half (steps >= 1500).
    values = [0.5 + (0.1 if s < 1500 else 0.2) + 1e-5 * s for s in steps]
    values[0] = 0.3
    # Another half budget is 1500 steps at 1e-5 per step: 0.015.
    assert projected_gain(_curve(steps, values)) == pytest.approx(0.015, rel=1e-9)
    assert projected_gain(_curve(steps, [0.7] * len(steps))) == pytest.approx(0.0, abs=1e-12)


def test_projected_gain_needs_three_evaluations_in_the_window():
    assert projected_gain(_curve([500, 1000, 1500], [0.6, 0.61, 0.62])) is None  # only 1000 and 1500
    assert projected_gain([]) is None
    assert projected_gain(_curve([1000, 1500, 2000], [0.6, float("nan"), 0.62])) is None


def test_plateau_rows_flag_rising_and_flat_configurations():
    steps = list(range(500, 6001, 500))
    rising = [0.6 + 2e-6 * s for s in steps]  # +0.6 points per 3000 steps
    flat = [0.65 + (1e-3 if k % 2 else -1e-3) for k, _ in enumerate(steps)]
    results = [{"model": m, "seed": seed, "auc": c[-1], "curve": _curve(steps, c)}
               for seed in (1, 2, 3) for m, c in (("Rising", rising), ("Flat", flat))]
    rows = {r["model"]: r for r in plateau_rows(results)}
    assert rows["Rising"]["plateaued"] == "no" and rows["Rising"]["interval"]["mean"] == pytest.approx(0.006)
    assert rows["Flat"]["plateaued"].startswith("yes") and abs(rows["Flat"]["interval"]["mean"]) < PLATEAU_THRESHOLD
    text = plateau_table(results)
    assert "| Rising | +0.60" in text and "| no |" in text and "| yes" in text
    assert "Convergence" in report_text(results)


def test_verdict_uses_the_interval_not_the_mean_alone():
    def stats(values):
        from marn_rec.training.ablation.statistics import t_interval
        return t_interval(values)

    assert verdict(stats([0.001, 0.0012, 0.0008])) == "yes"
    assert verdict(stats([-0.004, -0.005, -0.003])) == "yes (falling)"
    assert verdict(stats([0.010, 0.011, 0.009])) == "no"
    # Mean below the threshold, but one noisy seed: the interval reaches above it.
    assert verdict(stats([0.0, -0.002, 0.009])) == "undetermined"
    assert verdict(stats([0.004])) == "no" and verdict(stats([0.001])) == "yes"


def test_no_table_without_curves():
    results = [{"model": "M", "seed": 1, "auc": 0.6, "curve": []}]
    assert plateau_rows(results) == [] and plateau_table(results) == ""
    assert "Convergence" not in report_text(results)
