"""Paper Table 3 on the synthetic stream: every configuration, the same budget, several seeds.

Each (configuration, seed) run is :func:`marn_rec.training.loop.train` in its own single-process group
(world size 1); ``jobs`` runs go side by side, one per core, which on a small machine beats sharding
each run over processes that then wait on each other's all-to-alls.
"""

import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

from tqdm import tqdm

from marn_rec.config import ABLATIONS
from marn_rec.training.loop import TrainConfig

METRICS = ("auc", "user_auc", "cold_auc")


def _run_one(args: Tuple[TrainConfig, int]) -> Dict[str, Any]:
    cfg, threads = args
    import torch

    torch.set_num_threads(threads)
    from marn_rec.training.loop import free_port, train

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))

    result = train(cfg)
    import torch.distributed as dist

    dist.destroy_process_group()
    return {"model": cfg.model, "seed": cfg.seed, **result}


def run_study(
    base: TrainConfig,
    seeds: Sequence[int],
    models: Sequence[str] = tuple(ABLATIONS),
    jobs: int = 2,
) -> List[Dict[str, Any]]:
    """Trains every model with every seed; returns one evaluation record per run."""
    runs = [
        replace(base, model=m, seed=s, progress=False, resume="never",
                out_dir=os.path.join(base.out_dir, f"{m.replace('+', '_')}_seed{s}"))
        for s in seeds
        for m in models
    ]
    for r in runs:  # a study always starts fresh
        shutil.rmtree(os.path.join(r.out_dir, "checkpoints"), ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        for res in tqdm(pool.imap_unordered(_run_one, [(r, threads) for r in runs]),
                        total=len(runs), desc="ablation runs"):
            results.append(res)
    return sorted(results, key=lambda r: (list(models).index(r["model"]), r["seed"]))


def summarize(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and sample standard deviation of each metric per model, in Table 3 order."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model]
        row: Dict[str, Any] = {"model": model, "seeds": [r["seed"] for r in rs]}
        for m in METRICS + tuple(f"bayes_{m}" for m in METRICS):
            vals = [r[m] for r in rs if m in r]
            if vals:
                row[m] = statistics.fmean(vals)
                row[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    head = ["model", "AUC", "per-user AUC", "cold-item AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["model"]] + [
            f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if m in r else "n/a" for m in METRICS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    bayes = rows[0]
    cells = ["Bayes-optimal (true p)"] + [
        f"{bayes['bayes_' + m]:.4f}" if "bayes_" + m in bayes else "n/a" for m in METRICS
    ]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_of_dicts(dicts: List[Dict[str, float]]) -> Dict[str, float]:
    keys = sorted({k for d in dicts for k in d}, key=float)
    return {k: statistics.fmean(d[k] for d in dicts if k in d) for k in keys}


def level_and_recall_tables(results: List[Dict[str, Any]]) -> str:
    """Paper Table 4 (AUC by popularity level, 0 = least popular) and Table 5 (recall@N of cold
    items), each the mean over seeds, with the Bayes-optimal row."""
    models = list(dict.fromkeys(r["model"] for r in results))
    by_model = {m: [r for r in results if r["model"] == m] for m in models}
    lines = []
    levels = _mean_of_dicts([r["auc_by_popularity_level"] for r in results])
    head = ["model"] + [f"L{k}" for k in levels]
    lines += ["AUC by candidate popularity level (Table 4):", "",
              "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in models:
        means = _mean_of_dicts([r["auc_by_popularity_level"] for r in by_model[m]])
        lines.append("| " + " | ".join([m] + [f"{means[k]:.3f}" for k in levels]) + " |")
    bayes = _mean_of_dicts([r["bayes_auc_by_popularity_level"] for r in by_model[models[0]]])
    lines.append("| " + " | ".join(["Bayes-optimal"] + [f"{bayes[k]:.3f}" for k in levels]) + " |")
    with_recall = [r for r in results if "cold_recall" in r]
    if with_recall:
        ns = list(_mean_of_dicts([r["cold_recall"] for r in with_recall]))
        head = ["model"] + [f"recall@{n}" for n in ns]
        lines += ["", "Recall@N of clicked cold items among each user's cold candidates (Table 5):",
                  "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for m in models:
            rs = [r["cold_recall"] for r in by_model[m] if "cold_recall" in r]
            means = _mean_of_dicts(rs)
            lines.append("| " + " | ".join([m] + [f"{means[n]:.3f}" for n in ns]) + " |")
        bayes = _mean_of_dicts([r["bayes_cold_recall"] for r in by_model[models[0]] if "bayes_cold_recall" in r])
        lines.append("| " + " | ".join(["Bayes-optimal"] + [f"{bayes[n]:.3f}" for n in ns]) + " |")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    """Bars of mean AUC and per-user AUC with one standard deviation, Bayes ceilings as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    names = [r["model"].replace("BaseModel", "Base") for r in rows]
    for ax, metric, title in zip(axes, ("auc", "user_auc"), ("AUC", "per-user AUC (eq. 11)")):
        means = [r[metric] for r in rows]
        stds = [r[metric + "_std"] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue")
        ceiling = rows[0][f"bayes_{metric}"]
        ax.axhline(ceiling, color="tab:red", ls="--", label=f"Bayes-optimal {ceiling:.3f}")
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, math.floor((lo - 0.02) * 50) / 50), min(1.0, ceiling + 0.02))
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend(loc="lower right")
    fig.suptitle("Table 3 ablations on the synthetic Taobao stream (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: List[Dict[str, Any]], out_dir: str, command: str) -> Tuple[str, str]:
    """Writes results.jsonl, table.md and table.png under ``out_dir``; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    rows = summarize(results)
    table = markdown_table(rows) + "\n\n" + level_and_recall_tables(results)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(f"`{command}`\n\n{table}\n")
    png = os.path.join(out_dir, "table.png")
    plot(rows, png)
    return table, png


def read_results(out_dir: str) -> Tuple[List[Dict[str, Any]], str]:
    """The runs of an earlier study and the command that produced them (from table.md)."""
    with open(os.path.join(out_dir, "results.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    command = ""
    table = os.path.join(out_dir, "table.md")
    if os.path.exists(table):
        with open(table) as f:
            command = f.readline().strip().strip("`")
    return results, command
