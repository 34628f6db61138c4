"""What a benchmark leaves behind: the markdown sections that benchmarks/RESULTS.md quotes, the
throughput/memory/step-breakdown PNG, and the JSON + markdown files of a run."""

import json
import os
from typing import Any, Dict, Optional

from marn_rec.benchmarks.apgru import DESIGN_APGRU_MS
from marn_rec.benchmarks.config import BASELINE, run_label
from marn_rec.benchmarks.goals import GOAL_APGRU_RATIO, goal_lines, ok_runs
from marn_rec.benchmarks.machine import GIB, MIB
from marn_rec.benchmarks.profiling import BUCKETS


def machine_line(m: Dict[str, Any]) -> str:
    """The machine and software of a record, in one line."""
    mem = m.get("memory_total_bytes")
    parts = [
        f"`{m['platform']}`",
        f"{m['cpu_count']} CPUs",
        f"{mem / GIB:.0f} GiB RAM" if mem else None,
        f"torch {m['torch']}",
        f"torchrec {m.get('torchrec', '?')}",
        f"fbgemm-gpu {m.get('fbgemm_gpu', '?')}",
        f"GPU {m['cuda']}" if m.get("cuda") else "no GPU",
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}" if m.get("omp_wait_policy") else None,
    ]
    return ", ".join(p for p in parts if p)


def render_qps_markdown(results: Dict[str, Any], command: Optional[str] = None) -> str:
    """A markdown section for benchmarks/RESULTS.md: command, machine, date, table, goal ratios."""
    cfg = results["config"]
    m = results["machine"]
    command = command or cfg.get("command") or "python benchmarks/qps.py"
    out = [
        "## Training throughput: sharded (DMP) vs unsharded baseline",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {machine_line(m)}. Date: {m['date']}.",
        "",
        f"Model: `{cfg['preset']}` preset, `num_items` swept; batch {cfg['batch_size']} per process; "
        f"baseline 1 process x {cfg['baseline_threads']} threads, unsharded TorchRec collections with "
        f"`sparse=True` and `torch.optim.Adagrad`; sharded {cfg['world_size']} processes x "
        f"{cfg['sharded_threads']} thread(s), DMP with FBGEMM's fused row-wise AdaGrad"
        + (f" (pooled tables of at most {cfg['replicate_max_rows']:,} rows replicated on every rank, "
           "TorchRec's data_parallel, with TorchRec's dense RowWiseAdagrad)"
           if cfg.get("replicate_max_rows") else "") + ". "
        f"samples/s is the median of {cfg['windows']} windows of {cfg['steps_per_window']} steps after "
        f"{cfg['warmup_steps']} warm-up steps, on {cfg['num_batches']} pre-generated batches (generation "
        "not timed); global = all processes together.",
        "",
        "| num_items | dedup | mode | procs x threads | samples/s global | per process | vs baseline "
        "| step ms wall (CPU) | peak RSS / process GiB (predicted) | embedding + optimizer MiB / process "
        "| step: emb / dense / comm / opt / other |",
        "| ---: | :---: | --- | :---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    baseline = {(r["num_items"], r["dedup"]): r for r in ok_runs(results["runs"], mode=BASELINE)}
    for r in results["runs"]:
        label = run_label(r["mode"], r.get("pipeline", False), r.get("table_dtype", "fp32"))
        head = f"| {r['num_items']:,} | {'on' if r['dedup'] else 'off'} | {label} | "
        if r["status"] != "ok":
            pred = "/".join(f"{p / GIB:.1f}" for p in r.get("predicted_peak_per_process") or [])
            out.append(head + f"{r['processes']} x - | {r['status']} | | | | ({pred}) | | {r['reason']} |")
            continue
        b = baseline.get((r["num_items"], r["dedup"]))
        ratio = f"{r['global_samples_per_s'] / b['global_samples_per_s']:.2f}x" if b else "-"
        peak = "/".join(f"{p / GIB:.2f}" for p in r["peak_rss_per_process"])
        pred = "/".join(f"{p / GIB:.2f}" for p in r["predicted_peak_per_process"])
        emb = "/".join(f"{(e['weights'] + e['optimizer']) / MIB:,.0f}" for e in r["embedding_measured_per_process"])
        shares = "-"
        if "profile_ms_per_step" in r:
            p = r["profile_ms_per_step"]
            total = sum(p.values()) or 1.0
            shares = " / ".join(f"{100 * p[k] / total:.0f}%" for k in BUCKETS)
        out.append(
            head + f"{r['processes']} x {r['threads_per_process']} | {r['global_samples_per_s']:,.0f} | "
            f"{r['per_process_samples_per_s']:,.0f} | {ratio} | {r['step_ms']:.0f} "
            f"({'/'.join(f'{c:.0f}' for c in r['cpu_ms_per_step'])}) | {peak} ({pred}) | {emb} | {shares} |"
        )
    out += ["", "Goals (ratios from this run):", ""]
    out += [f"- {line}" for line in goal_lines(results["goals"])]
    data = results.get("data") or []
    if data:
        d = data[0]
        out += [
            "",
            f"Data: synthetic Taobao stream (Zipf exponent {d['zipf_exponent']}), generation "
            + ", ".join(f"{x['generate_ms_per_batch']:.0f} ms/batch at {x['num_items']:,} items"
                        + ("" if x["dedup"] else " per-slot") for x in data)
            + " (outside the timed steps).",
        ]
    out += [
        "",
        "How it is measured: peak RSS is the Linux high-water mark (`VmHWM`) of each process, reset "
        "at the start of the run; it includes about 0.5 GiB of torch/TorchRec imports. The prediction "
        "(made before allocating, runs that would not fit in "
        f"{cfg['memory_fraction']:.0%} of `MemAvailable` are skipped) is overhead + table weights + optimizer "
        "state (AdaGrad's full-size `sum` for the baseline, one float per shard row for the fused row-wise "
        "AdaGrad). Embedding bytes per process are the local table shards plus the fused optimizer "
        "state (sharded) or the tables plus AdaGrad state (baseline), read from the live modules and "
        "checked against the plan. Step shares come from a `torch.profiler` pass over "
        f"{cfg['profile_steps']} steps: each op's self CPU time goes to the bucket of its nearest "
        "enclosing event whose name matches communication (all2all, allreduce, gloo, c10d, input/output "
        "dist), optimizer (`Optimizer.step`, AdaGrad), or embedding (embedding, TBE, lookup); the rest "
        "is dense. FBGEMM's fused optimizer runs inside the TBE backward and counts as embedding; "
        "\"other\" is time inside the step but outside every op (Python, and waits such as DDP's "
        "allreduce at the end of backward). `+pipeline`: TorchRec's `TrainPipelineSparseDist` "
        "(the next batch's input all-to-all started before this batch's forward, its tensors "
        "exchanged after it); `fp16`: the item tower's tables stored in fp16 (FBGEMM, fp32 output and "
        "row-wise AdaGrad state).",
    ]
    floor = next((r for r in results["runs"] if r["status"] == "ok" and "floor" in r), None)
    if floor is not None:
        out += ["", render_floor_markdown(floor["floor"], floor["step_ms"], floor["num_items"])]
    return "\n".join(out) + "\n"


def render_floor_markdown(floor: Dict[str, Any], step_ms: Optional[float], num_items: int) -> str:
    """The compute-floor table of a record (see :mod:`marn_rec.benchmarks.floor`)."""
    from marn_rec.benchmarks.floor import floor_rows

    g = floor["gemm"]
    out = [
        f"Compute floor (baseline process, {num_items:,} items, B={floor['batch_size']}, "
        f"{floor['unique_items']} unique items, {floor['threads']} threads): FLOPs counted by "
        "`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions; lookups and "
        "element-wise ops count 0), each component run on its own on the inputs it received in a "
        f"real step, forward and backward apart. fp32 GEMM rate: {g['flop_per_s'] / 1e9:.1f} GFLOP/s "
        f"over the {len(g['shapes'])} matmul shapes that hold {100 * g['share_of_gemm_flops']:.0f}% of "
        f"the step's matmul FLOPs, each timed alone (a square {g['peak_shape'][0]} GEMM: "
        f"{g['peak_flop_per_s'] / 1e9:.1f} GFLOP/s). floor = FLOPs / that rate. Component times are "
        f"the component's forward + backward timed in isolation (median of {floor['reps']}); forward, "
        "backward and optimizer are timed inside real steps; the whole step is the timed windows' "
        "median.",
        "",
        "| component | forward GFLOP | backward GFLOP | ms | floor ms | time / floor | timed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in floor_rows(floor, step_ms):
        ms = "-" if r["ms"] != r["ms"] else f"{r['ms']:.1f}"
        ratio = "-" if r["ratio"] is None or r["ratio"] != r["ratio"] else f"{r['ratio']:.1f}x"
        out.append(f"| {r['name'].strip()} | {r['forward_gflop']:.4g} | {r['backward_gflop']:.4g} | {ms} | "
                   f"{r['floor_ms']:.1f} | {ratio} | {r['how']} |")
    out += ["", "| GEMM shape (op: batch x m x k x n) | calls per step | GFLOP per step | GFLOP/s |",
            "| --- | ---: | ---: | ---: |"]
    for sh in g["shapes"]:
        out.append(f"| {sh['op']}: {sh['batch']} x {sh['m']} x {sh['k']} x {sh['n']} | {sh['calls']} | "
                   f"{sh['flops'] / 1e9:.3f} | {sh['flop_per_s'] / 1e9:.1f} |")
    return "\n".join(out)


def plot_qps(results: Dict[str, Any], path: str) -> None:
    """PNG: samples/s and peak RSS per process against num_items, and the step breakdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    variants = sorted({(r["mode"], r.get("pipeline", False), r.get("table_dtype", "fp32")) for r in runs},
                      key=lambda v: (v[0] != BASELINE, v))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for mode, pipe, dtype in variants:
        for dedup in (True, False):
            rs = sorted(ok_runs(runs, mode=mode, dedup=dedup, pipeline=pipe, table_dtype=dtype),
                        key=lambda r: r["num_items"])
            if not rs:
                continue
            style = "-o" if dedup else "--x"
            label = f"{run_label(mode, pipe, dtype)} ({'dedup' if dedup else 'per-slot'})"
            x = [r["num_items"] for r in rs]
            axes[0].plot(x, [r["global_samples_per_s"] for r in rs], style, label=label)
            if dedup:
                axes[1].plot(x, [max(r["peak_rss_per_process"]) / GIB for r in rs], style, label=label)
    for n in sorted({r["num_items"] for r in runs if r["status"] == "skipped" and r["mode"] == BASELINE}):
        axes[0].axvline(n, color="grey", linestyle=":", linewidth=1)
    axes[0].set(xscale="log", xlabel="num_items", ylabel="training samples/s (global)",
                title="throughput")
    axes[1].set(xscale="log", xlabel="num_items", ylabel="peak RSS of the largest process (GiB)",
                title="memory per process")
    for ax in axes[:2]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    bars = [r for r in runs if r["status"] == "ok" and "profile_ms_per_step" in r and r["dedup"]]
    if bars:
        largest = max(r["num_items"] for r in bars)
        bars = [r for r in bars if r["num_items"] == largest]
        bottom = [0.0] * len(bars)
        for b in BUCKETS:
            vals = [r["profile_ms_per_step"][b] for r in bars]
            axes[2].bar([run_label(r["mode"], r.get("pipeline", False), r.get("table_dtype", "fp32"))
                         for r in bars], vals, bottom=bottom, label=b)
            bottom = [x + y for x, y in zip(bottom, vals)]
        axes[2].set(ylabel="ms per step (profiled, per process)", title=f"step breakdown, {largest:,} items")
        axes[2].tick_params(axis="x", labelrotation=20, labelsize=7)
        axes[2].legend(fontsize=8)
    else:
        axes[2].text(0.5, 0.5, "no profiler pass (--profile-steps 0)", ha="center", va="center")
        axes[2].set_axis_off()
    fig.suptitle(f"MARN {results['config']['preset']} preset, batch {results['config']['batch_size']} "
                 f"per process, {results['machine']['platform']}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_apgru_markdown(results: Dict[str, Any], command: Optional[str] = None) -> str:
    """A markdown section for benchmarks/RESULTS.md: command, machine, date, table, and the numbers
    docs/design.md measured for the loop variants."""
    cfg = results["config"]
    command = command or cfg.get("command") or "python benchmarks/apgru.py"
    m = results["machine"]
    out = [
        "## APGRU vs torch.nn.GRU (forward + backward)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {machine_line(m)}. Date: {m['date']}. {results['threads']} threads.",
        "",
        f"B={cfg['batch_size']}, T={cfg['steps']}, input = hidden = d, property {cfg['property_dim']}-d, "
        f"full-length sequences; loss = sum of all states; median of {cfg['reps']} repetitions (the three "
        f"modules interleaved) after {cfg['warmup']} warm-up, milliseconds. APGRU without property is the "
        "same loop without the `P_u p_t` term (BaseModel's GRU path).",
        "",
        "| d | torch.nn.GRU | APGRU | APGRU without property | APGRU / nn.GRU | goal <= 1.2x |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results["rows"]:
        ms = r["ms"]
        out.append(
            f"| {r['dim']} | {ms['torch.nn.GRU']:.1f} | {ms['APGRU (property gate)']:.1f} | "
            f"{ms['APGRU (no property)']:.1f} | {r['ratio']:.2f}x | "
            f"{'met' if r['ratio'] <= GOAL_APGRU_RATIO else 'not met'} |"
        )
    out += [
        "",
        "docs/design.md's numbers (same kind of 2-core machine, torch 2.13 CPU, B=1024, T=50, 64-d): "
        + "; ".join(f"{k} {v:.0f} ms" for k, v in DESIGN_APGRU_MS.items())
        + f" (loop over unbind / nn.GRU = {DESIGN_APGRU_MS['gate loop over gi.unbind(0)'] / DESIGN_APGRU_MS['torch.nn.GRU']:.2f}x).",
    ]
    return "\n".join(out) + "\n"


def write_outputs(results: Dict[str, Any], markdown: str, out_dir: str, stem: str) -> Dict[str, str]:
    """``<stem>.json`` (the results) and ``<stem>.md`` (``markdown``) in ``out_dir``; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "markdown": os.path.join(out_dir, f"{stem}.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(markdown)
    return paths
