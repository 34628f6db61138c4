"""Has a study converged? Per configuration, the trend of the AUC over the end of the budget.

One run's evaluations scatter by a few 0.1 AUC points, so the difference of its last two says
little. The trend of a run is the least-squares slope through every evaluation in the last half of
its budget; what matters is what that slope would still add if training went on for another half
budget (the *projected gain*). With few evaluations one run's slope is itself noisy, so the
verdict uses the 95% interval of the mean over seeds against ``threshold`` (default 0.25 AUC
points: below the paired differences between configurations that the tables set out to resolve, so
that going on would not reorder them): "yes" when the whole interval lies below it, "no" when the
whole interval lies above it, "undetermined" otherwise (with one seed: its value against the
threshold). The check needs at least 3 evaluations in the last half of the budget
(``--eval-every`` at most a quarter of ``--steps``); a falling mean is "yes (falling)".
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from marn_rec.training.ablation.statistics import NAMES, t_interval

PLATEAU_THRESHOLD = 0.0025  # AUC (0.25 points)
WINDOW = 0.5  # the last half of the budget


def slope(points: Sequence[Tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (at least two distinct x)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("slope needs at least two distinct x")
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def projected_gain(curve: List[Dict[str, Any]], metric: str = "auc", window: float = WINDOW) -> Optional[float]:
    """What ``metric`` would gain over another ``window`` of the run's budget at the slope of its
    evaluations in the last ``window`` of it; None with fewer than 3 evaluations there."""
    pts = [(c["step"], c[metric]) for c in curve if metric in c and c[metric] is not None
           and not math.isnan(c[metric])]
    if not pts:
        return None
    last = max(s for s, _ in pts)
    tail = [(s, v) for s, v in pts if s >= (1.0 - window) * last]
    if len(tail) < 3:
        return None
    return slope(tail) * window * last


def plateau_rows(results: List[Dict[str, Any]], metric: str = "auc",
                 threshold: float = PLATEAU_THRESHOLD) -> List[Dict[str, Any]]:
    """Per configuration with curves: the projected gain of every seed, their mean with a 95%
    t-interval, and whether the mean is below ``threshold``."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        gains = {r["seed"]: projected_gain(r.get("curve") or [], metric)
                 for r in results if r["model"] == model}
        got = [g for g in gains.values() if g is not None]
        if not got:
            continue
        stats = t_interval(got)
        rows.append({"model": model, "gains": gains, "interval": stats,
                     "plateaued": verdict(stats, threshold)})
    return rows


def verdict(stats: Dict[str, Any], threshold: float = PLATEAU_THRESHOLD) -> str:
    """"yes", "yes (falling)", "no" or "undetermined" for a :func:`t_interval` of projected gains."""
    low = stats["mean"] if stats["low"] is None else stats["low"]
    high = stats["mean"] if stats["high"] is None else stats["high"]
    if high < threshold:
        return "yes (falling)" if high < 0 else "yes"
    if low > threshold:
        return "no"
    return "undetermined"


def plateau_table(results: List[Dict[str, Any]], metric: str = "auc",
                  threshold: float = PLATEAU_THRESHOLD) -> str:
    """Markdown of :func:`plateau_rows`; empty when no run has 3 evaluations in its last half."""
    rows = plateau_rows(results, metric, threshold)
    if not rows:
        return ""
    pts = lambda x: "n/a" if x is None else f"{100 * x:+.2f}"  # noqa: E731
    name = NAMES.get(metric, metric)
    lines = [f"Convergence: the {name} that each run would still gain over another half of its budget, "
             "at the least-squares slope of its evaluations in the last half (AUC points; "
             f"plateaued: the 95% interval of the mean over seeds below {100 * threshold:.2f}):", "",
             "| model | projected gain [95% CI] | plateaued | per seed |", "| --- | --- | --- | --- |"]
    for r in rows:
        s = r["interval"]
        ci = "" if s["low"] is None else f" [{pts(s['low'])}, {pts(s['high'])}]"
        per_seed = ", ".join(f"{seed}: {pts(g)}" for seed, g in r["gains"].items())
        lines.append(f"| {r['model']} | {pts(s['mean'])}{ci} | {r['plateaued']} | {per_seed} |")
    return "\n".join(lines)
