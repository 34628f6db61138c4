"""The statistics of a study: mean ± sample standard deviation per configuration, and paired
differences by seed against a reference configuration with a Student-t interval over seeds.

Why paired: a seed fixes the initial weights and the order of the training batches (and, on the
synthetic stream, the data themselves), so two configurations trained with the same seed differ
only by the configuration. The spread of ``AUC(model, s) - AUC(reference, s)`` over seeds ``s`` is
then much smaller than the spread of either AUC, and the interval says whether the difference is
distinguishable from seed noise.

The interval is the two-sided 95% **t-interval over seeds**: ``mean(d) ± t(0.975, n - 1) *
sd(d) / sqrt(n)``, ``sd`` the sample standard deviation (n - 1), ``n`` the number of seeds both
configurations ran. It treats the seeds' differences as independent draws from a normal
distribution; with 3 to 5 seeds ``t(0.975, n - 1)`` is 4.30 to 2.78, so the intervals are wide by
design. No scipy: the t quantile comes from the regularized incomplete beta function (continued
fraction, as in Numerical Recipes) inverted by bisection, tested against tabulated values.
"""

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

METRICS = ("auc", "user_auc", "cold_auc", "warm_auc")
NAMES = {"auc": "AUC", "user_auc": "per-user AUC", "cold_auc": "cold-candidate AUC",
         "warm_auc": "warm-candidate AUC"}  # of METRICS, for tables
CONFIDENCE = 0.95
POWER = 0.8  # of :func:`detectable_difference`: the convention of study design


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a, b > 0 and x in [0, 1], got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Any]:
    """Mean, sample std and the two-sided t-interval of the mean of ``values``.

    With one value the interval is undefined: ``low``/``high``/``half_width`` are None.
    """
    n = len(values)
    if n == 0:
        raise ValueError("t_interval of no values")
    mean = statistics.fmean(values)
    out: Dict[str, Any] = {"n": n, "mean": mean, "values": list(values),
                           "std": None, "half_width": None, "low": None, "high": None}
    if n > 1:
        std = statistics.stdev(values)
        half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
        out.update(std=std, half_width=half, low=mean - half, high=mean + half)
    return out


def detectable_difference(std: float, n: int, confidence: float = CONFIDENCE,
                          power: float = POWER) -> Optional[float]:
    """The smallest true mean difference that a paired study of ``n`` seeds, whose differences
    scatter with sample standard deviation ``std``, finds with probability ``power``: its
    ``confidence`` t-interval then excludes zero. ``(t(1 - alpha / 2, n - 1) + t(power, n - 1)) *
    std / sqrt(n)``, the usual approximation of the noncentral t (slightly optimistic for few
    seeds; tested against simulation). None for fewer than 2 seeds.

    Why: an interval that contains zero says "no difference resolved", not "no difference". This
    says how large a difference would have been resolved, so that a null result reads "smaller than
    this", and how many seeds a smaller one needs (:func:`seeds_to_detect`).
    """
    if n < 2:
        return None
    if not (0.0 < confidence < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"confidence and power must be in (0, 1), got {confidence}, {power}")
    df = n - 1
    return (student_t_quantile(0.5 + confidence / 2.0, df) + student_t_quantile(power, df)) * std / math.sqrt(n)


def seeds_to_detect(difference: float, std: float, confidence: float = CONFIDENCE,
                    power: float = POWER, max_seeds: int = 10_000) -> Optional[int]:
    """The fewest seeds whose :func:`detectable_difference` is at most ``|difference|`` for paired
    differences of standard deviation ``std``; None if more than ``max_seeds``. (The detectable
    difference falls as seeds are added, so a bisection over n finds it.)"""
    def enough(n: int) -> bool:
        return detectable_difference(std, n, confidence, power) <= abs(difference)

    if difference == 0 or not enough(max_seeds):
        return None
    lo, hi = 1, max_seeds  # enough(hi); not enough(lo) (one seed resolves nothing)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, Any]:
    """``mean(a) - mean(b)`` with Welch's t-interval (unpaired samples of unequal variances,
    Welch-Satterthwaite degrees of freedom): for two models whose seeds share nothing, e.g. a peer
    library's model against marn_rec's. ``low``/``high`` are None with fewer than 2 values on a
    side, or without any spread."""
    if not a or not b:
        raise ValueError("welch_interval needs values on both sides")
    diff = statistics.fmean(a) - statistics.fmean(b)
    out: Dict[str, Any] = {"mean": diff, "n": (len(a), len(b)), "df": None,
                           "half_width": None, "low": None, "high": None}
    if len(a) > 1 and len(b) > 1:
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        if va + vb > 0:
            df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
            half = student_t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(va + vb)
            out.update(df=df, half_width=half, low=diff - half, high=diff + half)
    return out


def summarize(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and sample standard deviation of each metric per model, in the order of ``results``."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model]
        row: Dict[str, Any] = {"model": model, "seeds": [r["seed"] for r in rs]}
        for m in METRICS + tuple(f"bayes_{m}" for m in METRICS):
            vals = [r[m] for r in rs if m in r]
            # Only over every seed: a mean over some of them would sit beside means over all.
            if vals and len(vals) == len(rs):
                row[m] = statistics.fmean(vals)
                row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def paired_differences(
    results: List[Dict[str, Any]],
    reference: str,
    metrics: Sequence[str] = METRICS,
    confidence: float = CONFIDENCE,
) -> List[Dict[str, Any]]:
    """For every model other than ``reference``: per metric, the differences ``model - reference``
    on each seed both ran, their mean and t-interval (:func:`t_interval`).

    Returns one row per model (in the order of ``results``): ``{"model", "reference", "seeds",
    metric: t_interval(...)}``; a metric that one of the two lacks on every common seed is left
    out. Empty when ``reference`` did not run.
    """
    by_seed: Dict[Tuple[str, int], Dict[str, Any]] = {(r["model"], r["seed"]): r for r in results}
    ref_seeds = sorted(s for (m, s) in by_seed if m == reference)
    if not ref_seeds:
        return []
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        if model == reference:
            continue
        seeds = [s for s in ref_seeds if (model, s) in by_seed]
        if not seeds:
            continue
        row: Dict[str, Any] = {"model": model, "reference": reference, "seeds": seeds}
        for metric in metrics:
            pairs = [(s, by_seed[(model, s)].get(metric), by_seed[(reference, s)].get(metric))
                     for s in seeds]
            diffs = [a - b for _, a, b in pairs if a is not None and b is not None]
            if diffs:
                row[metric] = t_interval(diffs, confidence)
                row[metric]["seeds"] = [s for s, a, b in pairs if a is not None and b is not None]
        rows.append(row)
    return rows


def format_difference(d: Optional[Dict[str, Any]]) -> str:
    """``+0.0123 [+0.0050, +0.0196]`` (mean [95% interval]); ``n/a`` without data."""
    if not d:
        return "n/a"
    if d["low"] is None:
        return f"{d['mean']:+.4f} (1 seed)"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
