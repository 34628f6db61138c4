"""The whole unsharded training step, old against fast, each variant in its own fresh processes.

``qps.py`` compares the old and the fast step inside one process, in interleaved windows. The
allocator setting (:mod:`marn_rec.training.allocator`) cannot take part in that comparison: it is
process-wide and glibc cannot return to its adaptive defaults once set. So this benchmark starts
one fresh process per (variant, round) and alternates the variants round by round, so that a drift
of the machine's load hits every variant alike:

* ``old``: the step of 2026-12-01: fp32, AdaGrad's Python loop, the modules' old kernels, glibc's
  malloc as it comes;
* ``fast``: bf16 autocast, the fused dense AdaGrad, the current kernels, glibc's malloc as it comes
  (the fast step that ``qps.py`` times);
* ``fast+keep``: the same with freed memory kept mapped (:func:`keep_freed_memory`);
* ``fp32``: fp32, AdaGrad's loop, the current kernels, glibc's malloc as it comes: what training
  runs by default (without ``--dense-dtype bf16 --fused-optimizer``), for the kernels' share.

The model is ``qps.py``'s unsharded baseline (sparse AdaGrad for the tables), on the same
pre-generated batches for every process.
"""

import multiprocessing as mp
import os
import queue as queue_module
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List

import torch

from marn_rec.benchmarks.config import SCRATCH_DIR, model_config
from marn_rec.benchmarks.goals import GOAL_FAST_STEP
from marn_rec.benchmarks.machine import machine_info, peak_rss_bytes

OLD, FAST, FAST_KEEP, FP32 = "old", "fast", "fast+keep", "fp32"
VARIANTS = (OLD, FAST, FAST_KEEP, FP32)
DESCRIPTIONS = {
    OLD: "fp32, AdaGrad loop, kernels of 2026-12-01, glibc malloc",
    FAST: "bf16 autocast, fused AdaGrad, current kernels, glibc malloc",
    FAST_KEEP: "the same, freed memory kept mapped",
    FP32: "fp32, AdaGrad loop, current kernels, glibc malloc (training's default)",
}


@dataclass
class FastStepConfig:
    """Options of :func:`run_fast_step` (the flags of ``benchmarks/fast_step.py``)."""

    preset: str = "small"
    num_items: int = 100_000
    batch_size: int = 1024
    num_batches: int = 4
    threads: int = 2  # as qps.py's baseline process
    warmup_steps: int = 3
    windows: int = 4
    steps_per_window: int = 5
    rounds: int = 5  # fresh processes per variant, alternating
    seed: int = 0
    out_dir: str = f"{SCRATCH_DIR}/fast_step"
    command: str = ""


FAST_STEP_QUICK = dict(preset="tiny", num_items=1000, batch_size=16, num_batches=2, warmup_steps=1,
                       windows=1, steps_per_window=1, rounds=1)


def _time_variant(variant: str, cfg: FastStepConfig, batch_path: str) -> Dict[str, Any]:
    """One process's measurement of ``variant``: the median window's ms per step, and page faults
    and peak RSS of the whole process."""
    from marn_rec.benchmarks.measure import _fused_like, sparse_baseline, use_old_step_kernels
    from marn_rec.models.marn import MARN, MARNTrain
    from marn_rec.training.allocator import keep_freed_memory

    kept = keep_freed_memory() if variant == FAST_KEEP else False
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = MARNTrain(MARN(model_config(cfg.preset, cfg.num_items)))
    optimizers, _ = sparse_baseline(model, 0.1)
    fast = variant in (FAST, FAST_KEEP)
    if fast:
        optimizers = [optimizers[0], _fused_like(optimizers[1])]
    use_old_step_kernels(model, variant == OLD)
    batches = torch.load(batch_path, weights_only=False)
    model.train()

    def step(i: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if fast else nullcontext():
            loss, _ = model(batches[i % len(batches)])
        loss.backward()
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)

    for i in range(cfg.warmup_steps):
        step(i)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ms = []
    for w in range(cfg.windows):
        t = time.perf_counter()
        for i in range(cfg.steps_per_window):
            step(i)
        ms.append((time.perf_counter() - t) * 1e3 / cfg.steps_per_window)
    timed_steps = cfg.windows * cfg.steps_per_window
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"variant": variant, "ms_per_step": statistics.median(ms), "window_ms": ms,
            "faults_per_step": faults / timed_steps, "peak_rss": peak_rss_bytes(), "kept": kept}


def _child(variant: str, cfg: FastStepConfig, batch_path: str, queue: Any) -> None:
    from marn_rec.quiet import quiet_libraries

    try:
        with quiet_libraries():
            queue.put(_time_variant(variant, cfg, batch_path))
    except BaseException as e:  # reported by the parent, with the variant's name
        queue.put({"variant": variant, "error": f"{type(e).__name__}: {e}"})


def _in_fresh_process(variant: str, cfg: FastStepConfig, batch_path: str) -> Dict[str, Any]:
    ctx = mp.get_context("spawn")  # a fresh interpreter: glibc's malloc as a new process has it
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(variant, cfg, batch_path, queue))
    proc.start()
    while True:  # a child killed outright (OOM, signal) puts nothing: do not wait for it forever
        try:
            result = queue.get(timeout=2.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the {variant} step's process died (exit code {proc.exitcode})")
    proc.join()
    if "error" in result:
        raise RuntimeError(f"the {variant} step failed in its process: {result['error']}")
    return result


def run_fast_step(cfg: FastStepConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """``cfg.rounds`` rounds of one fresh process per variant (the order rotating from round to
    round); per variant the median over rounds of each process's median window."""
    from marn_rec.benchmarks.measure import generate_batches

    os.makedirs(cfg.out_dir, exist_ok=True)
    batch_path = os.path.join(cfg.out_dir, "batches.pt")
    generate_batches(cfg, cfg.num_items, True, batch_path)
    log(f"whole unsharded step, {cfg.preset} preset, {cfg.num_items:,} items, B={cfg.batch_size}, "
        f"{cfg.threads} threads; {cfg.rounds} rounds of one fresh process per variant")
    runs: Dict[str, List[Dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(cfg.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            out = _in_fresh_process(variant, cfg, batch_path)
            runs[variant].append(out)
            log(f"  round {r + 1}, {variant}: {out['ms_per_step']:.1f} ms/step, "
                f"{out['faults_per_step']:.0f} page faults/step")
    os.remove(batch_path)
    ms = {v: statistics.median(o["ms_per_step"] for o in runs[v]) for v in VARIANTS}
    faults = {v: statistics.median(o["faults_per_step"] for o in runs[v]) for v in VARIANTS}
    ratios = {"fast / old": ms[OLD] / ms[FAST], "fast+keep / fast": ms[FAST] / ms[FAST_KEEP],
              "fast+keep / old": ms[OLD] / ms[FAST_KEEP], "fp32 / old": ms[OLD] / ms[FP32]}
    for v in VARIANTS:
        log(f"{v:10s} {ms[v]:7.1f} ms/step  {cfg.batch_size * 1e3 / ms[v]:7.0f} samples/s  "
            f"{faults[v]:7.0f} page faults/step  ({DESCRIPTIONS[v]})")
    for name, value in ratios.items():
        log(f"samples/s {name}: {value:.2f}x")
    met = ratios["fast+keep / old"] >= GOAL_FAST_STEP
    log(f"whole step, fast+keep against old: {ratios['fast+keep / old']:.2f}x "
        f"(goal >= {GOAL_FAST_STEP}x: {'met' if met else 'NOT met'})")
    return {"config": asdict(cfg), "machine": machine_info(), "runs": runs, "ms_per_step": ms,
            "faults_per_step": faults, "ratios": ratios, "goal_met": met}


def render_fast_step_markdown(results: Dict[str, Any]) -> str:
    """A markdown section: command, machine, date, and the table of variants."""
    cfg, m = results["config"], results["machine"]
    out = ["## The whole unsharded step, old against fast, in fresh processes", "", "```bash",
           cfg.get("command") or "python benchmarks/fast_step.py", "```", "",
           f"{m['date']}, {m['processor']}, {m['cpu_count']} cores, torch {m['torch']}, load average "
           f"{m['load_average']}; {cfg['preset']} preset, {cfg['num_items']:,} items, B = "
           f"{cfg['batch_size']}, {cfg['threads']} threads, {cfg['rounds']} rounds of one process "
           "per variant (median over rounds of each process's median window).", "",
           "| variant | what | ms/step | samples/s | page faults/step | ms/step per round |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
    for v in VARIANTS:
        ms = results["ms_per_step"][v]
        rounds = ", ".join(f"{o['ms_per_step']:.1f}" for o in results["runs"][v])
        out.append(f"| {v} | {DESCRIPTIONS[v]} | {ms:.1f} | {cfg['batch_size'] * 1e3 / ms:.0f} | "
                   f"{results['faults_per_step'][v]:.0f} | {rounds} |")
    out.append("")
    out += [f"- samples/s {name}: **{value:.2f}x**" for name, value in results["ratios"].items()]
    return "\n".join(out) + "\n"
