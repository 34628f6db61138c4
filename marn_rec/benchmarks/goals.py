"""The goals of the benchmark issue, as ratios read from one sweep's records: sharded against
baseline samples/s, dedup against per-slot item tower, per-rank embedding memory against an even
split (and APGRU against nn.GRU, measured by :mod:`marn_rec.benchmarks.apgru`)."""

from typing import Any, Dict, Iterable, List

from marn_rec.benchmarks.config import BASELINE
from marn_rec.benchmarks.machine import MIB
from marn_rec.benchmarks.plans import imbalance

# Goals of issue 4, checked as ratios from one run.
GOAL_SHARDED_SPEEDUP = 1.5
GOAL_DEDUP_SPEEDUP = 3.0
GOAL_APGRU_RATIO = 1.2
GOAL_MEMORY_BALANCE = 0.05


def ok_runs(records: Iterable[Dict[str, Any]], **match: Any) -> List[Dict[str, Any]]:
    """The records that ran (status ok) and have every ``key=value`` of ``match``."""
    return [r for r in records if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def evaluate_goals(results: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals as ratios from this run (None where the run has no data for one)."""
    runs = results["runs"]
    goals: Dict[str, Any] = {}
    sharding_types = sorted({r["mode"] for r in runs if r["mode"] != BASELINE})

    # 1. sharded >= 1.5x baseline samples/s on the largest table both hold (dedup on).
    speedups = {}
    for st in sharding_types:
        both = [
            n for n in {r["num_items"] for r in ok_runs(runs, mode=st, dedup=True)}
            if ok_runs(runs, mode=BASELINE, num_items=n, dedup=True)
        ]
        if not both:
            continue
        n = max(both)
        s = ok_runs(runs, mode=st, num_items=n, dedup=True)[0]
        b = ok_runs(runs, mode=BASELINE, num_items=n, dedup=True)[0]
        speedups[st] = {
            "num_items": n,
            "ratio": s["global_samples_per_s"] / b["global_samples_per_s"],
            "per_process_ratio": s["per_process_samples_per_s"] / b["per_process_samples_per_s"],
        }
    goals["sharded_speedup"] = speedups
    baseline_all = [r for r in runs if r["mode"] == BASELINE and r["dedup"]]
    not_held = sorted(r["num_items"] for r in baseline_all if r["status"] != "ok")
    goals["baseline_largest_held"] = max((r["num_items"] for r in ok_runs(baseline_all)), default=None)
    goals["baseline_first_not_held"] = not_held[0] if not_held else None
    held = sorted(ok_runs(baseline_all), key=lambda r: r["num_items"])
    if len(held) >= 2:
        goals["baseline_slowdown"] = {
            "from_items": held[0]["num_items"],
            "to_items": held[-1]["num_items"],
            "ratio": held[0]["global_samples_per_s"] / held[-1]["global_samples_per_s"],
        }
    sharded_ok = [r["num_items"] for r in runs if r["mode"] != BASELINE and r["status"] == "ok"]
    goals["sharded_largest_held"] = max(sharded_ok, default=None)

    # 2. dedup item tower >= 3x the per-slot one (same table size, baseline process).
    dedup = {}
    for r in ok_runs(runs, mode=BASELINE, dedup=False):
        d = ok_runs(runs, mode=BASELINE, dedup=True, num_items=r["num_items"])
        if d and "tower_ms" in r and "tower_ms" in d[0]:
            dedup = {
                "num_items": r["num_items"],
                "tower_ratio": r["tower_ms"] / d[0]["tower_ms"],
                "step_ratio": d[0]["global_samples_per_s"] / r["global_samples_per_s"],
                "slots_per_unique_item": d[0]["slots_per_batch"] / d[0]["unique_items_per_batch"],
            }
            break
    goals["dedup_speedup"] = dedup or None
    dedup_sharded = {}
    for st in sharding_types:
        for r in ok_runs(runs, mode=st, dedup=False):
            d = ok_runs(runs, mode=st, dedup=True, num_items=r["num_items"])
            if d:
                dedup_sharded[st] = d[0]["global_samples_per_s"] / r["global_samples_per_s"]
                break
    goals["dedup_step_ratio_sharded"] = dedup_sharded

    # 4. per-rank embedding memory within 5% of total/N (measured, weights + optimizer state).
    balance = {}
    for st in sharding_types:
        rs = ok_runs(runs, mode=st, dedup=True)
        if not rs:
            continue
        r = max(rs, key=lambda x: x["num_items"])
        per_rank = [e["weights"] + e["optimizer"] for e in r["embedding_measured_per_process"]]
        planned = [e["weights"] + e["optimizer"] for e in r["embedding_planned_per_process"]]
        balance[st] = {
            "num_items": r["num_items"],
            "imbalance": imbalance(per_rank),
            "measured_per_rank": per_rank,
            "planned_per_rank": planned,
            "measured_matches_plan": per_rank == planned,
        }
    goals["memory_balance"] = balance
    return goals


def goal_lines(goals: Dict[str, Any]) -> List[str]:
    """Human-readable ratio lines (printed and put in the markdown)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    for st, s in goals.get("sharded_speedup", {}).items():
        lines.append(
            f"ratio sharded/baseline samples/s [{st}, num_items={s['num_items']:,}, largest both hold]: "
            f"{s['ratio']:.2f}x global, {s['per_process_ratio']:.2f}x per process "
            f"(goal >= {GOAL_SHARDED_SPEEDUP}x: {verdict(s['ratio'] >= GOAL_SHARDED_SPEEDUP)})"
        )
    if not goals.get("sharded_speedup"):
        lines.append("ratio sharded/baseline samples/s: no table size where both ran")
    if goals.get("baseline_first_not_held") is not None:
        lines.append(
            f"baseline: largest table held {goals['baseline_largest_held'] or 0:,} items; "
            f"not at {goals['baseline_first_not_held']:,} (sharded held up to "
            f"{goals['sharded_largest_held'] or 0:,})"
        )
    slow = goals.get("baseline_slowdown")
    if slow:
        lines.append(
            f"ratio baseline samples/s at {slow['from_items']:,} / at {slow['to_items']:,} items: "
            f"{slow['ratio']:.2f}x (above 1: the baseline slows as its table grows)"
        )
    d = goals.get("dedup_speedup")
    if d:
        lines.append(
            f"ratio dedup/per-slot item tower [baseline, num_items={d['num_items']:,}]: "
            f"{d['tower_ratio']:.2f}x tower forward+backward, {d['step_ratio']:.2f}x whole step, "
            f"{d['slots_per_unique_item']:.2f} slots per unique item "
            f"(goal >= {GOAL_DEDUP_SPEEDUP}x: {verdict(d['tower_ratio'] >= GOAL_DEDUP_SPEEDUP)})"
        )
    else:
        lines.append("ratio dedup/per-slot item tower: not measured (needs baseline with dedup on and off)")
    for st, r in goals.get("dedup_step_ratio_sharded", {}).items():
        lines.append(f"ratio dedup/per-slot whole step [{st}]: {r:.2f}x")
    for st, b in goals.get("memory_balance", {}).items():
        per = "/".join(f"{x / MIB:.1f}" for x in b["measured_per_rank"])
        lines.append(
            f"ratio per-rank embedding memory / (total/N) [{st}, num_items={b['num_items']:,}]: "
            f"max deviation {100 * b['imbalance']:.1f}% ({per} MiB; "
            f"{'equals' if b['measured_matches_plan'] else 'differs from'} the plan) "
            f"(goal <= {100 * GOAL_MEMORY_BALANCE:.0f}%: {verdict(b['imbalance'] <= GOAL_MEMORY_BALANCE)})"
        )
    lines.append("APGRU <= 1.2x nn.GRU: see benchmarks/apgru.py")
    return lines
