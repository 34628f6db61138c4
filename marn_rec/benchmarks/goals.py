"""The goals of the benchmark issues, as ratios read from one sweep's records: sharded against
baseline samples/s, dedup against per-slot item tower, per-rank embedding memory against an even
split (and APGRU against nn.GRU, measured by :mod:`marn_rec.benchmarks.apgru`); and, for "speed
and scale", the pipelined sharded runs against the baseline at fixed compute (where the all-to-all
time went), the catalogue held per GiB with fp16 tables against fp32, and the step against its
compute floor. The goals of the first kind read the plain (unpipelined, fp32) runs only."""

from typing import Any, Dict, Iterable, List, Optional

from marn_rec.benchmarks.config import BASELINE, run_label
from marn_rec.benchmarks.machine import GIB, MIB
from marn_rec.benchmarks.plans import imbalance
from marn_rec.benchmarks.profiling import COMMUNICATION, OTHER

# Goals of issue 4, checked as ratios from one run.
GOAL_SHARDED_SPEEDUP = 1.5
GOAL_DEDUP_SPEEDUP = 3.0
GOAL_APGRU_RATIO = 1.2
GOAL_MEMORY_BALANCE = 0.05
# Speed and scale: pipelined sharded >= the baseline at fixed compute (2 ranks x 1 thread against
# 1 process x 2 threads).
GOAL_PIPELINED_SPEEDUP = 1.0
# A faster step, same model: >= 1.5x whole-step samples/s, old path behind a flag.
GOAL_FAST_STEP = 1.5

# Values of record keys that older records (and the baseline) do not carry.
_DEFAULTS = {"pipeline": False, "table_dtype": "fp32"}


def fast_step_name(fast_step: Dict[str, Any]) -> str:
    """What a run's fast step was: its dense dtype, the fused AdaGrad and the current kernels."""
    dtype = fast_step.get("dtype", "bf16")  # records before --fast-dtype ran bf16
    return ("bf16 autocast" if dtype == "bf16" else "fp32") + " + fused AdaGrad + new kernels"


def _ok(measurement: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """``measurement`` if it ran (status ok), else None."""
    return measurement if measurement and measurement.get("status") == "ok" else None


def ok_runs(records: Iterable[Dict[str, Any]], **match: Any) -> List[Dict[str, Any]]:
    """The records that ran (status ok) and have every ``key=value`` of ``match``."""
    return [
        r for r in records
        if r["status"] == "ok" and all(r.get(k, _DEFAULTS.get(k)) == v for k, v in match.items())
    ]


def is_plain(r: Dict[str, Any]) -> bool:
    """An unpipelined run with fp32 tables (what the first issue's goals compare)."""
    return not r.get("pipeline", False) and r.get("table_dtype", "fp32") == "fp32"


def evaluate_goals(results: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals as ratios from this run (None where the run has no data for one)."""
    all_runs = results["runs"]
    runs = [r for r in all_runs if is_plain(r)]
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
    goals["pipelined"] = pipelined_goals(all_runs)
    goals["table_dtype"] = table_dtype_goals(all_runs)
    goals["floor"] = floor_goal(all_runs)
    goals["fast_step"] = [
        {"label": run_label(r["mode"], r.get("pipeline", False), r.get("table_dtype", "fp32")),
         "num_items": r["num_items"], "dedup": r["dedup"], **r["fast_step"]}
        for r in all_runs if r["status"] == "ok" and "fast_step" in r
    ]
    return goals


def _bucket_ms(r: Dict[str, Any], bucket: str) -> Optional[float]:
    p = r.get("profile_ms_per_step")
    return p.get(bucket) if p else None


def pipelined_goals(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per sharding type, at the largest fp32 table a pipelined run trained (dedup on), preferring
    one the baseline also ran: pipelined/baseline samples/s (sequential runs), pipelined/plain
    (sequential runs, and interleaved windows against a plain twin if measured), the step time and
    the profiled communication and "other" (waits outside ops) per step of each loop. A figure
    whose run is missing is None."""
    out: Dict[str, Any] = {}
    for st in sorted({r["mode"] for r in runs if r["mode"] != BASELINE}):
        piped_sizes = {r["num_items"] for r in ok_runs(runs, mode=st, pipeline=True, table_dtype="fp32", dedup=True)}
        if not piped_sizes:
            continue
        with_base = [n for n in piped_sizes if ok_runs(runs, mode=BASELINE, dedup=True, num_items=n)]
        n = max(with_base or piped_sizes)
        piped = ok_runs(runs, mode=st, pipeline=True, table_dtype="fp32", dedup=True, num_items=n)[0]
        plain = next(iter(ok_runs(runs, mode=st, pipeline=False, table_dtype="fp32", dedup=True, num_items=n)), None)
        base = next(iter(ok_runs(runs, mode=BASELINE, dedup=True, num_items=n)), None)

        def rate_ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> Optional[float]:
            return a["global_samples_per_s"] / b["global_samples_per_s"] if a and b else None

        def get(r: Optional[Dict[str, Any]], key: str) -> Any:
            return r.get(key) if r else None

        out[st] = {
            "num_items": n,
            "ratio_vs_baseline": rate_ratio(piped, base),
            "plain_ratio_vs_baseline": rate_ratio(plain, base),
            "ratio_vs_plain": rate_ratio(piped, plain),
            "interleaved_ratio_vs_plain": (piped.get("vs_plain") or {}).get("ratio"),
            # Against the baseline in windows taken in turn (--interleave-baseline): immune to drift.
            "interleaved_vs_baseline": _ok(piped.get("vs_baseline_interleaved")),
            "step_ms": {"plain": get(plain, "step_ms"), "pipelined": piped["step_ms"], "baseline": get(base, "step_ms")},
            "communication_ms": {"plain": plain and _bucket_ms(plain, COMMUNICATION),
                                 "pipelined": _bucket_ms(piped, COMMUNICATION)},
            "other_ms": {"plain": plain and _bucket_ms(plain, OTHER), "pipelined": _bucket_ms(piped, OTHER)},
            "profile_step_ms": {"plain": get(plain, "profile_step_ms"), "pipelined": piped.get("profile_step_ms")},
            "cpu_ms_per_step": {"plain": get(plain, "cpu_ms_per_step"), "pipelined": piped.get("cpu_ms_per_step"),
                                "baseline": get(base, "cpu_ms_per_step")},
        }
    return out


def _embedding_bytes(r: Dict[str, Any]) -> int:
    return sum(e["weights"] + e["optimizer"] for e in r["embedding_measured_per_process"])


def table_dtype_goals(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """fp16 against fp32 tables, per sharding type (the plain loop if it ran, else the pipeline):
    catalogue items per GiB of embedding memory (weights + optimizer state, all ranks, measured)
    at the largest size both ran, samples/s there, and the largest size each held."""
    out: Dict[str, Any] = {}
    dtypes = {r.get("table_dtype", "fp32") for r in runs if r["mode"] != BASELINE}
    if not {"fp32", "fp16"} <= dtypes:
        return out
    for st in sorted({r["mode"] for r in runs if r["mode"] != BASELINE}):
        for pipe in (False, True):
            both = [
                n for n in {r["num_items"] for r in ok_runs(runs, mode=st, pipeline=pipe, table_dtype="fp16", dedup=True)}
                if ok_runs(runs, mode=st, pipeline=pipe, table_dtype="fp32", dedup=True, num_items=n)
            ]
            if both:
                break
        else:
            continue
        n = max(both)
        got = {d: ok_runs(runs, mode=st, pipeline=pipe, table_dtype=d, dedup=True, num_items=n)[0] for d in ("fp32", "fp16")}
        per_gib = {d: n / (_embedding_bytes(r) / GIB) for d, r in got.items()}
        held, not_held = {}, {}
        for d in ("fp32", "fp16"):
            rs = [r for r in runs if r["mode"] == st and r.get("pipeline", False) == pipe
                  and r.get("table_dtype", "fp32") == d and r["dedup"]]
            held[d] = max((r["num_items"] for r in rs if r["status"] == "ok"), default=None)
            not_held[d] = min((r["num_items"] for r in rs if r["status"] != "ok"), default=None)
        out[st] = {
            "num_items": n,
            "pipeline": pipe,
            "items_per_gib": per_gib,
            "items_per_gib_ratio": per_gib["fp16"] / per_gib["fp32"],
            "embedding_bytes": {d: _embedding_bytes(r) for d, r in got.items()},
            "samples_per_s_ratio": got["fp16"]["global_samples_per_s"] / got["fp32"]["global_samples_per_s"],
            "largest_held": held,
            "first_not_held": not_held,
        }
    return out


def floor_goal(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The whole step against its compute floor, from the run that measured the floor."""
    from marn_rec.benchmarks.floor import floor_rows

    for r in ok_runs(runs, mode=BASELINE):
        if "floor" in r:
            rows = floor_rows(r["floor"], r["step_ms"])
            whole = rows[-1]
            return {"num_items": r["num_items"], "step_ms": whole["ms"], "floor_ms": whole["floor_ms"],
                    "ratio": whole["ratio"], "gflop_per_step": whole["forward_gflop"] + whole["backward_gflop"],
                    "gemm_gflop_per_s": r["floor"]["gemm"]["flop_per_s"] / 1e9}
    return None


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
    for st, p in goals.get("pipelined", {}).items():
        parts = []
        if p["plain_ratio_vs_baseline"] is not None:
            parts.append(f"plain loop {p['plain_ratio_vs_baseline']:.2f}x")
        if p["ratio_vs_plain"] is not None:
            parts.append(f"pipelined/plain {p['ratio_vs_plain']:.2f}x, sequential runs")
        if p.get("interleaved_ratio_vs_plain") is not None:
            parts.append(f"pipelined/plain {p['interleaved_ratio_vs_plain']:.2f}x in interleaved windows")
        steps = p["step_ms"]
        if steps["plain"] is not None:
            parts.append(f"step {steps['plain']:.0f} -> {steps['pipelined']:.0f} ms")
        comm = p["communication_ms"]
        if comm["plain"] is not None and comm["pipelined"] is not None:
            parts.append(f"communication {comm['plain']:.1f} -> {comm['pipelined']:.1f} ms/step")
        detail = f" ({'; '.join(parts)})" if parts else ""
        if p["ratio_vs_baseline"] is not None:
            lines.append(
                f"ratio pipelined sharded/baseline samples/s at fixed compute [{st}, num_items={p['num_items']:,}]: "
                f"{p['ratio_vs_baseline']:.2f}x{detail} (goal >= {GOAL_PIPELINED_SPEEDUP}x: "
                f"{verdict(p['ratio_vs_baseline'] >= GOAL_PIPELINED_SPEEDUP)})"
            )
        else:
            lines.append(f"pipelined sharded [{st}, num_items={p['num_items']:,}]: no baseline run at this size{detail}")
        inter = p.get("interleaved_vs_baseline")
        if inter is not None:
            pairs = inter["pair_ratios"]
            lines.append(
                f"ratio pipelined sharded/baseline samples/s at fixed compute, windows taken in turn "
                f"[{st}, num_items={p['num_items']:,}]: {inter['ratio']:.2f}x, median of {len(pairs)} "
                f"window pairs ({min(pairs):.2f}-{max(pairs):.2f}; {inter['sharded_samples_per_s']:.0f} "
                f"against {inter['baseline_samples_per_s']:.0f} samples/s) (goal >= {GOAL_PIPELINED_SPEEDUP}x: "
                f"{verdict(inter['ratio'] >= GOAL_PIPELINED_SPEEDUP)})"
            )
    for st, t in goals.get("table_dtype", {}).items():
        per = t["items_per_gib"]
        held = t["largest_held"]
        not_held = t["first_not_held"]
        lines.append(
            f"ratio fp16/fp32 catalogue items per GiB of embedding memory [{st}"
            f"{'+pipeline' if t['pipeline'] else ''}, num_items={t['num_items']:,}]: "
            f"{t['items_per_gib_ratio']:.2f}x ({per['fp16'] / 1e6:.1f}M vs {per['fp32'] / 1e6:.1f}M items/GiB); "
            f"samples/s {t['samples_per_s_ratio']:.2f}x"
        )
        lines.append(
            f"largest catalogue held [{st}]: fp32 {held['fp32'] or 0:,}"
            + (f" (not {not_held['fp32']:,})" if not_held["fp32"] else "")
            + f", fp16 {held['fp16'] or 0:,}" + (f" (not {not_held['fp16']:,})" if not_held["fp16"] else "")
        )
    for f in goals.get("fast_step") or []:
        lines.append(
            f"ratio fast/old step samples/s [{f['label']}, num_items={f['num_items']:,}"
            f"{'' if f['dedup'] else ', per-slot'}]: {f['ratio']:.2f}x, interleaved windows "
            f"({f['old_samples_per_s']:.0f} -> {f['fast_samples_per_s']:.0f} samples/s; {fast_step_name(f)}; "
            f"|p_fast - p_old| max {f['max_abs_probability_difference']:.2g}, "
            f"mean {f.get('mean_abs_probability_difference', float('nan')):.2g}) "
            f"(goal >= {GOAL_FAST_STEP}x: {verdict(f['ratio'] >= GOAL_FAST_STEP)})"
        )
    f = goals.get("floor")
    if f:
        lines.append(
            f"ratio step time / compute floor [baseline, num_items={f['num_items']:,}]: {f['ratio']:.1f}x "
            f"({f['step_ms']:.3g} ms for {f['gflop_per_step']:.3g} GFLOP at {f['gemm_gflop_per_s']:.1f} GFLOP/s "
            f"= {f['floor_ms']:.3g} ms)"
        )
    return lines
