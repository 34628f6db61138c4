"""The side-by-side throughput sweep: for every table size (and table dtype), plan each sharding
type, generate the batches, predict each run's memory, run the baseline and the sharded modes
(plain and pipelined; skipping what would not fit, recording what failed), summarise the ranks'
figures and evaluate the goals. The baseline run of the smallest size also measures the compute
floor (:mod:`marn_rec.benchmarks.floor`)."""

import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, replace
from typing import Any, Callable, Dict, List, Tuple

import torch

from marn_rec.benchmarks.config import BASELINE, ROW_WISE, QPSConfig, RunSpec, model_config, run_label
from marn_rec.benchmarks.goals import evaluate_goals, fast_step_name
from marn_rec.benchmarks.launcher import launch, launch_interleaved
from marn_rec.benchmarks.machine import GIB, MIB, machine_info
from marn_rec.benchmarks.measure import generate_batches
from marn_rec.benchmarks.memory import MemoryModel, memory_budget
from marn_rec.benchmarks.plans import baseline_embedding_bytes, make_plan, plan_bytes_per_rank, table_shapes
from marn_rec.benchmarks.profiling import BUCKETS
from marn_rec.quiet import quiet_libraries

Log = Callable[[str], None]


def run_qps(cfg: QPSConfig, log: Log = print) -> Dict[str, Any]:
    """The whole side-by-side sweep; returns the results (written by
    :func:`~marn_rec.benchmarks.cli.qps_main`)."""
    from marn_rec.models.marn import MARN, MARNTrain
    from marn_rec.training.sharding import apply_embedding_optimizer

    device = cfg.resolved_device()
    sharding_types = cfg.resolved_sharding_types()
    if device == "cpu" and ROW_WISE in sharding_types:
        raise ValueError("row_wise needs reduce-scatter, which gloo (CPU) does not have")
    machine = machine_info()
    log(f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"torchrec {machine['torchrec']}, device {device}")
    load = machine.get("load_average")
    if load and load[0] > 0.25 * (machine["cpu_count"] or 1):
        log(f"WARNING: load average {load[0]:.2f} before starting: other work shares the CPUs, "
            "throughput numbers will be noisy (2-thread OpenMP regions stall when a core is taken)")
    log(f"threads: baseline 1 process x {cfg.baseline_threads} thread(s); sharded "
        f"{cfg.world_size} processes x {cfg.sharded_threads} thread(s) "
        f"({'gloo' if device == 'cpu' else 'nccl'}); "
        + ("freed memory kept mapped in every process" if cfg.keep_freed_memory
           else "glibc's malloc as it comes (--no-keep-freed-memory)"))
    log(f"preset {cfg.preset}, batch {cfg.batch_size} per process, {cfg.warmup_steps} warm-up steps, "
        f"{cfg.windows} windows x {cfg.steps_per_window} steps (median), {cfg.profile_steps} profiled steps")
    if cfg.floor_only:
        sharding_types = []
    log(f"sharded runs: {', '.join(sharding_types) or 'none'}; "
        f"pipeline {'/'.join('on' if p else 'off' for p in cfg.pipeline)}; "
        f"table dtypes {'/'.join(cfg.table_dtypes)}"
        + (f"; memory capped at {cfg.memory_budget_gib:g} GiB per run" if cfg.memory_budget_gib else ""))
    memory = MemoryModel()
    records: List[Dict[str, Any]] = []
    data_stats: List[Dict[str, Any]] = []
    work_dir = tempfile.mkdtemp(prefix="marn_qps_")
    sizes = sorted(cfg.sizes)[:1] if cfg.floor_only else sorted(cfg.sizes)
    floor_pending = cfg.floor and cfg.baseline and "fp32" in cfg.table_dtypes
    try:
        with quiet_libraries():
            pending: List[Tuple[RunSpec, Dict[str, Any]]] = []
            for num_items in sizes:
                shapes: Dict[str, Any] = {}
                table_total: Dict[str, int] = {}
                plans: Dict[Tuple[str, str], Tuple[str, List[Dict[str, int]]]] = {}
                for dtype in cfg.table_dtypes:
                    model_cfg = model_config(cfg.preset, num_items, dtype)
                    meta_model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
                    # As in the workers: the in-backward optimizer makes the plans use the FUSED kernel.
                    apply_embedding_optimizer(meta_model, lr=cfg.lr)
                    shapes[dtype] = table_shapes(meta_model)
                    table_total[dtype] = sum(r * c * e for r, c, e in shapes[dtype].values())
                    for st in sharding_types:
                        plan = make_plan(meta_model, cfg.world_size, device, st, cfg.batch_size,
                                         cfg.replicate_max_rows)
                        path = os.path.join(work_dir, f"plan_{num_items}_{st}_{dtype}.pt")
                        torch.save(plan, path)
                        plans[(st, dtype)] = (path, plan_bytes_per_rank(plan, shapes[dtype], cfg.world_size))
                for dedup in ([True] if cfg.floor_only else cfg.dedup_modes(num_items)):
                    batch_path = os.path.join(work_dir, f"batches_{num_items}_{int(dedup)}.pt")
                    stats = generate_batches(cfg, num_items, dedup, batch_path)
                    data_stats.append({"num_items": num_items, "dedup": dedup, **stats})
                    log(f"data num_items={num_items:,} dedup={dedup}: {stats['generate_ms_per_batch']:.0f} ms/batch "
                        f"to generate (not timed below), {stats['unique_items_per_batch']:.0f} unique items of "
                        f"{stats['slots_per_batch']:.0f} slots per batch")
                    specs: List[Tuple[RunSpec, str]] = []
                    if cfg.baseline and "fp32" in cfg.table_dtypes:
                        floor = floor_pending and dedup
                        floor_pending = floor_pending and not floor
                        specs.append((RunSpec(BASELINE, num_items, dedup, 1, cfg.baseline_threads, batch_path,
                                              None, [baseline_embedding_bytes(shapes["fp32"])], floor=floor),
                                      "fp32"))
                    for dtype in cfg.table_dtypes:
                        for mode in sharding_types:
                            for pipe in cfg.pipeline:
                                path, per_rank = plans[(mode, dtype)]
                                specs.append((RunSpec(mode, num_items, dedup, cfg.world_size, cfg.sharded_threads,
                                                      batch_path, path, per_rank, pipeline=pipe,
                                                      table_dtype=dtype), dtype))
                    for spec, dtype in specs:
                        info = {"table_bytes": table_total[dtype]}
                        if cfg.isolate:
                            records.append(run_isolated(spec, cfg, memory, work_dir, info, log))
                        else:
                            pending.append((spec, info))
                    if cfg.interleave_baseline and cfg.isolate and specs and specs[0][0].mode == BASELINE:
                        # Isolated runs appended one record per spec, in order: the baseline's first.
                        ((base_spec, _), base_rec), *sharded = zip(specs, records[-len(specs):])
                        for (spec, dtype), rec in sharded:
                            if spec.pipeline and dtype == "fp32" and rec["status"] == base_rec["status"] == "ok":
                                rec["vs_baseline_interleaved"] = interleaved_vs_baseline(base_spec, spec, cfg,
                                                                                         work_dir, log)
            if pending:
                records += run_grouped(pending, cfg, memory, work_dir, log)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = {
        "config": asdict(cfg),
        "machine": machine,
        "data": data_stats,
        "runs": records,
    }
    results["goals"] = evaluate_goals(results)
    return results


def interleaved_vs_baseline(baseline: RunSpec, sharded: RunSpec, cfg: QPSConfig, work_dir: str,
                            log: Log) -> Dict[str, Any]:
    """The sharded run against the baseline in windows taken in turn by the two process sets, both
    alive at once (:func:`~marn_rec.benchmarks.launcher.launch_interleaved`): per window pair the
    ratio of global samples/s, so that a drift of the machine between runs cancels out. Only the
    windows: no profile, fast step or floor. A failure is recorded, not raised."""
    lean = replace(cfg, profile_steps=0, fast_step="off", tower_reps=0, interleave_pipeline=False)
    # Both models are in memory at once: their predicted peaks together must fit (on GPUs, the
    # baseline's and the largest rank's share a device).
    peaks = (baseline.predicted_peak_per_process, sharded.predicted_peak_per_process)
    need = sum(map(max, peaks)) if cfg.resolved_device() == "cuda" else sum(map(sum, peaks))
    ok, reason, _ = fits_budget(need, cfg, sharded.world_size)
    if not ok:
        log(f"  {sharded.label} against the baseline, interleaved: both models at once: {reason}")
        return {"status": "skipped", "reason": f"both models at once: {reason}"}
    try:
        base_ranks, sharded_ranks = launch_interleaved(replace(baseline, floor=False), sharded, lean, work_dir)
    except RuntimeError as e:
        log(f"  {sharded.label} against the baseline, interleaved: failed: {e}")
        return {"status": "failed", "reason": str(e)}
    base, shard = global_rates(base_ranks, cfg), global_rates(sharded_ranks, cfg)
    ratios = [s / b for s, b in zip(shard, base)]
    out = {"status": "ok", "ratio": statistics.median(ratios), "pair_ratios": ratios,
           "baseline_samples_per_s": statistics.median(base), "sharded_samples_per_s": statistics.median(shard)}
    log(f"  {sharded.label} against the baseline, {len(ratios)} interleaved window pairs: "
        f"{out['ratio']:.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}; "
        f"{out['sharded_samples_per_s']:.0f} against {out['baseline_samples_per_s']:.0f} samples/s)")
    return out


def predict(spec: RunSpec, cfg: QPSConfig, memory: MemoryModel) -> Tuple[bool, str, int]:
    """Sets ``spec.predicted_peak_per_process``; (fits, why not, budget) against the memory free
    now (the sum over processes on the host, the largest process on a GPU)."""
    spec.predicted_peak_per_process = memory.predict(spec.mode, spec.dedup, spec.embedding_per_process)
    if cfg.resolved_device() == "cuda":
        need = max(spec.predicted_peak_per_process)
    else:
        need = sum(spec.predicted_peak_per_process)
    return fits_budget(need, cfg, spec.world_size)


def fits_budget(need: int, cfg: QPSConfig, world_size: int) -> Tuple[bool, str, int]:
    """(fits, why not, budget) of ``need`` bytes against the memory free now (and the cap of
    ``--memory-budget-gib``)."""
    budget, what = memory_budget(cfg.resolved_device(), world_size, cfg.memory_fraction)
    if cfg.memory_budget_gib and cfg.memory_budget_gib * GIB < budget:
        budget = int(cfg.memory_budget_gib * GIB)
        if need > budget:
            return False, (f"predicted {need / GIB:.1f} GiB > the {cfg.memory_budget_gib:g} GiB cap "
                           "(--memory-budget-gib): skipped"), budget
    if need > budget:
        return False, (f"predicted {need / GIB:.1f} GiB > {cfg.memory_fraction:.0%} of {what} "
                       f"({budget / cfg.memory_fraction / GIB:.1f} GiB): skipped"), budget
    return True, "", budget


def global_rates(per_rank: List[Dict[str, Any]], cfg: QPSConfig,
                 windows: Callable[[Dict[str, Any]], List[float]] = lambda r: r["window_s"]) -> List[float]:
    """Samples/s of all ranks together in each timed window (a window ends with its slowest rank);
    ``windows``: where a rank's result keeps the window seconds."""
    samples = len(per_rank) * cfg.steps_per_window * cfg.batch_size
    return [samples / max(w) for w in zip(*[windows(r) for r in per_rank])]


def summarise(spec: RunSpec, per_rank: List[Dict[str, Any]], cfg: QPSConfig) -> Dict[str, Any]:
    """One result record from the ranks' raw measurements."""
    world = spec.world_size
    windows = list(zip(*[r["window_s"] for r in per_rank]))
    rates = global_rates(per_rank, cfg)
    rec: Dict[str, Any] = {
        "mode": spec.mode,
        "num_items": spec.num_items,
        "dedup": spec.dedup,
        "pipeline": spec.pipeline,
        "table_dtype": spec.table_dtype,
        "status": "ok",
        "processes": world,
        "threads_per_process": per_rank[0]["threads"],
        "global_samples_per_s": statistics.median(rates),
        "per_process_samples_per_s": statistics.median(rates) / world,
        "window_global_samples_per_s": rates,
        "step_ms": 1e3 * statistics.median(max(w) for w in windows) / cfg.steps_per_window,
        # Process CPU time per step (all threads): less sensitive than wall time to other work on
        # the machine, but it counts OpenMP spin-waits.
        "cpu_ms_per_step": [
            1e3 * statistics.median(r["cpu_s"]) / cfg.steps_per_window for r in per_rank
        ],
        "peak_rss_per_process": [r["peak_rss"] for r in per_rank],
        "predicted_peak_per_process": spec.predicted_peak_per_process,
        "peak_is_per_run": all(r["peak_reset"] for r in per_rank),
        "embedding_planned_per_process": spec.embedding_per_process,
        "embedding_measured_per_process": [
            {"weights": r["emb_weights_bytes"], "optimizer": r["emb_optimizer_bytes"]} for r in per_rank
        ],
        "build_s": max(r["build_s"] for r in per_rank),
        "unique_items_per_batch": statistics.mean(r["unique_items"] for r in per_rank),
        "slots_per_batch": statistics.mean(r["slots"] for r in per_rank),
    }
    if "profile_ms_per_step" in per_rank[0]:
        buckets = {b: statistics.mean(r["profile_ms_per_step"][b] for r in per_rank) for b in BUCKETS}
        rec["profile_ms_per_step"] = buckets
        rec["profile_step_ms"] = statistics.mean(r["profile_step_ms"] for r in per_rank)
    if "profile_device_ms_per_step" in per_rank[0]:
        rec["profile_device_ms_per_step"] = per_rank[0]["profile_device_ms_per_step"]
    if "peak_device_bytes" in per_rank[0]:
        rec["peak_device_bytes_per_process"] = [r["peak_device_bytes"] for r in per_rank]
    if "tower_ms" in per_rank[0]:
        rec["tower_ms"] = per_rank[0]["tower_ms"]
    if "floor" in per_rank[0]:
        rec["floor"] = per_rank[0]["floor"]
    if "vs_plain" in per_rank[0]:
        pairs = zip(*[zip(r["vs_plain"]["plain_window_s"], r["vs_plain"]["pipelined_window_s"]) for r in per_rank])
        ratios = [max(p for p, _ in pair) / max(q for _, q in pair) for pair in pairs]
        rec["vs_plain"] = {
            "ratio": statistics.median(ratios),
            "pair_ratios": ratios,
            "plain_samples_per_s": statistics.median(
                global_rates(per_rank, cfg, lambda r: r["vs_plain"]["plain_window_s"])),
            "pipelined_samples_per_s": statistics.median(
                global_rates(per_rank, cfg, lambda r: r["vs_plain"]["pipelined_window_s"])),
        }
    if "fast_step" in per_rank[0]:
        pairs = zip(*[zip(r["fast_step"]["old_window_s"], r["fast_step"]["fast_window_s"]) for r in per_rank])
        ratios = [max(o for o, _ in pair) / max(f for _, f in pair) for pair in pairs]
        old = global_rates(per_rank, cfg, lambda r: r["fast_step"]["old_window_s"])
        new = global_rates(per_rank, cfg, lambda r: r["fast_step"]["fast_window_s"])
        rec["fast_step"] = {
            "old_samples_per_s": statistics.median(old),
            "fast_samples_per_s": statistics.median(new),
            "ratio": statistics.median(ratios),
            "pair_ratios": ratios,
            "max_abs_probability_difference": max(
                r["fast_step"]["max_abs_probability_difference"] for r in per_rank),
            "mean_abs_probability_difference": statistics.mean(
                r["fast_step"]["mean_abs_probability_difference"] for r in per_rank),
            "dtype": per_rank[0]["fast_step"]["dtype"],
        }
    return rec


def _skip_record(spec: RunSpec, status: str, reason: str) -> Dict[str, Any]:
    return {
        "mode": spec.mode, "num_items": spec.num_items, "dedup": spec.dedup,
        "pipeline": spec.pipeline, "table_dtype": spec.table_dtype, "status": status,
        "reason": reason, "processes": spec.world_size,
        "predicted_peak_per_process": spec.predicted_peak_per_process,
        "embedding_planned_per_process": spec.embedding_per_process,
    }


def log_record(rec: Dict[str, Any], log: Log) -> None:
    """One record as the sweep's progress lines."""
    label = run_label(rec["mode"], rec.get("pipeline", False), rec.get("table_dtype", "fp32"))
    if rec["status"] != "ok":
        log(f"  {label:<12} {rec['num_items']:>13,} {'dedup' if rec['dedup'] else 'per-slot':<8} "
            f"{rec['status']}: {rec['reason']}")
        return
    peak = "/".join(f"{p / GIB:.2f}" for p in rec["peak_rss_per_process"])
    pred = "/".join(f"{p / GIB:.2f}" for p in rec["predicted_peak_per_process"])
    emb = "/".join(f"{(e['weights'] + e['optimizer']) / MIB:.1f}" for e in rec["embedding_measured_per_process"])
    line = (f"  {label:<12} {rec['num_items']:>13,} {'dedup' if rec['dedup'] else 'per-slot':<8} "
            f"{rec['global_samples_per_s']:>9.0f} samples/s global, {rec['per_process_samples_per_s']:>8.0f} per process "
            f"({rec['processes']}x{rec['threads_per_process']} threads), step {rec['step_ms']:.1f} ms "
            f"(CPU {'/'.join(f'{c:.0f}' for c in rec['cpu_ms_per_step'])} ms), "
            f"peak RSS {peak} GiB (predicted {pred}), embedding+opt {emb} MiB per process")
    log(line)
    if "profile_ms_per_step" in rec:
        p = rec["profile_ms_per_step"]
        total = sum(p.values()) or 1.0
        log("      profile: " + ", ".join(f"{b} {100 * p[b] / total:.0f}%" for b in BUCKETS)
            + f" of {total:.1f} ms/step")
    if "tower_ms" in rec:
        log(f"      item tower forward+backward: {rec['tower_ms']:.1f} ms per batch")
    if "vs_plain" in rec:
        v = rec["vs_plain"]
        log(f"      pipelined / plain loop (twin model, interleaved windows): {v['ratio']:.2f}x "
            f"({v['plain_samples_per_s']:.0f} -> {v['pipelined_samples_per_s']:.0f} samples/s)")
    if "fast_step" in rec:
        f = rec["fast_step"]
        log(f"      fast step ({fast_step_name(f)}) / old, interleaved windows: {f['ratio']:.2f}x "
            f"({f['old_samples_per_s']:.0f} -> {f['fast_samples_per_s']:.0f} samples/s); "
            f"|p_fast - p_old| max {f['max_abs_probability_difference']:.2g}, "
            f"mean {f['mean_abs_probability_difference']:.2g}")
    if "floor" in rec:
        from marn_rec.benchmarks.floor import floor_lines

        for line in floor_lines(rec["floor"], rec["step_ms"]):
            log("      " + line)


def run_isolated(spec: RunSpec, cfg: QPSConfig, memory: MemoryModel, work_dir: str,
                 info: Dict[str, Any], log: Log) -> Dict[str, Any]:
    """One run in its own set of processes; its measured peak calibrates ``memory``."""
    ok, reason, _ = predict(spec, cfg, memory)
    if not ok:
        rec = _skip_record(spec, "skipped", reason)
        log_record(rec, log)
        return rec
    try:
        per_rank = launch([spec], cfg, work_dir)[0]
    except RuntimeError as e:
        rec = _skip_record(spec, "failed", str(e))
        log_record(rec, log)
        return rec
    rec = summarise(spec, per_rank, cfg)
    rec.update(info)
    memory.observe(spec.mode, spec.dedup, rec["embedding_measured_per_process"], rec["peak_rss_per_process"])
    log_record(rec, log)
    return rec


def run_grouped(pending: List[Tuple[RunSpec, Dict[str, Any]]], cfg: QPSConfig, memory: MemoryModel,
                work_dir: str, log: Log) -> List[Dict[str, Any]]:
    """One set of processes per mode for all its runs (``--quick``: saves process start-up)."""
    records: Dict[int, Dict[str, Any]] = {}
    by_mode: Dict[str, List[int]] = {}
    for n, (spec, _) in enumerate(pending):
        ok, reason, _ = predict(spec, cfg, memory)
        if ok:
            by_mode.setdefault(spec.mode, []).append(n)
        else:
            records[n] = _skip_record(spec, "skipped", reason)
    for mode, idx in by_mode.items():
        specs = [pending[n][0] for n in idx]
        try:
            results = launch(specs, cfg, work_dir)
        except RuntimeError as e:
            for n in idx:
                records[n] = _skip_record(pending[n][0], "failed", str(e))
            continue
        for n, per_rank in zip(idx, results):
            rec = summarise(pending[n][0], per_rank, cfg)
            rec.update(pending[n][1])
            records[n] = rec
    out = [records[n] for n in range(len(pending))]
    for rec in out:
        log_record(rec, log)
    return out
