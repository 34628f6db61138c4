"""The report of a study: markdown tables (mean ± std per configuration; paired differences by seed
with 95% t-intervals; Tables 4 and 5 where the data has them) and PNG plots (the means, the paired
differences with their interval bars, the learning curves of every run)."""

import json
import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from marn_rec.training.ablation.convergence import plateau_table
from marn_rec.training.ablation.statistics import (
    CONFIDENCE,
    METRICS,
    NAMES,
    POWER,
    detectable_difference,
    format_difference,
    paired_differences,
    summarize,
)

# The references of the paired differences, when they ran.
REFERENCES = ("BaseModel+IDs", "BaseModel+CONC")
RESULTS_FILE, TABLE_FILE, SKIPPED_FILE = "results.jsonl", "table.md", "skipped.json"
PARTIAL_RESULTS_FILE = "results.partial.jsonl"  # written run by run (runner.run_study)
TABLE_PNG, DIFFERENCES_PNG, CURVES_PNG = "table.png", "differences.png", "curves.png"


def _has_bayes(rows: List[Dict[str, Any]]) -> bool:
    return any(f"bayes_{m}" in r for r in rows for m in METRICS)


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """Mean ± sample std per configuration; the Bayes-optimal row where the data knows the truth."""
    head = ["model"] + [NAMES[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["model"]] + [
            f"{r[m]:.4f} ± {r[m + '_std']:.4f}" if m in r else "n/a" for m in METRICS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if _has_bayes(rows):
        # The Bayes AUC depends on the seed (the data) only: the row of the most seeds, named by
        # its seeds when the configurations ran on different ones (a merged study).
        bayes = max((r for r in rows if any("bayes_" + m in r for m in METRICS)), key=lambda r: len(r["seeds"]))
        label = "Bayes-optimal (true p)"
        if any(sorted(r["seeds"]) != sorted(bayes["seeds"]) for r in rows):
            label += f", seeds {', '.join(map(str, sorted(bayes['seeds'])))}"
        cells = [label] + [
            f"{bayes['bayes_' + m]:.4f}" if "bayes_" + m in bayes else "n/a" for m in METRICS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(diffs: List[Dict[str, Any]], reference: str) -> str:
    """Paired differences against ``reference``: mean [95% t-interval over seeds] per metric, the
    AUC differences seed by seed, and on how many seeds the model was ahead."""
    if not diffs:
        return ""
    head = ["model"] + [f"Δ {NAMES[m]}" for m in METRICS] + ["ΔAUC by seed", "AUC ahead on",
                                                            "ΔAUC resolved"]
    lines = [f"Paired by seed, minus {reference} (mean [{CONFIDENCE:.0%} t-interval over seeds, "
             f"n - 1 degrees of freedom]; ΔAUC resolved: the smallest true difference these seeds "
             f"would find {POWER:.0%} of the time at their scatter):", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for d in diffs:
        auc = d.get("auc")
        by_seed = ", ".join(f"{s}: {v:+.4f}" for s, v in zip(auc["seeds"], auc["values"])) if auc else "n/a"
        ahead = f"{sum(v > 0 for v in auc['values'])}/{auc['n']}" if auc else "n/a"
        resolved = detectable_difference(auc["std"], auc["n"]) if auc and auc["std"] is not None else None
        cells = [d["model"]] + [format_difference(d.get(m)) for m in METRICS] + [
            by_seed, ahead, f"±{resolved:.4f}" if resolved is not None else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def all_differences(results: List[Dict[str, Any]],
                    references: Sequence[str] = REFERENCES) -> Dict[str, List[Dict[str, Any]]]:
    """:func:`paired_differences` against every reference that ran."""
    out = {}
    for ref in references:
        diffs = paired_differences(results, ref)
        if diffs:
            out[ref] = diffs
    return out


def twin_differences(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each configuration trained without a modality ("MARN without statistic") minus the same
    configuration with every modality ("MARN"), paired by seed; where both ran."""
    names = list(dict.fromkeys(r["model"] for r in results))
    out = []
    for name in names:
        full = name.split(" without ")[0]
        if full != name and full in names:
            pair = [r for r in results if r["model"] in (name, full)]
            out += [d for d in paired_differences(pair, full) if d["model"] == name]
    return out


def _mean_of_dicts(dicts: List[Dict[str, float]]) -> Dict[str, float]:
    keys = sorted({k for d in dicts for k in d}, key=float)
    return {k: statistics.fmean(d[k] for d in dicts if k in d) for k in keys}


def level_and_recall_tables(results: List[Dict[str, Any]]) -> str:
    """Paper Table 4 (AUC by popularity level, 0 = least popular) and Table 5 (recall@N of cold
    items), each the mean over seeds, with the Bayes-optimal row; each only where the runs
    measured it."""
    models = list(dict.fromkeys(r["model"] for r in results))
    by_model = {m: [r for r in results if r["model"] == m] for m in models}
    lines: List[str] = []
    with_levels = [r for r in results if "auc_by_popularity_level" in r]
    if with_levels:
        levels = _mean_of_dicts([r["auc_by_popularity_level"] for r in with_levels])
        head = ["model"] + [f"L{k}" for k in levels]
        lines += ["AUC by candidate popularity level (Table 4):", "",
                  "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for m in models:
            rs = [r["auc_by_popularity_level"] for r in by_model[m] if "auc_by_popularity_level" in r]
            means = _mean_of_dicts(rs)
            lines.append("| " + " | ".join([m] + [f"{means[k]:.3f}" if k in means else "n/a"
                                                  for k in levels]) + " |")
        bayes_runs = [r["bayes_auc_by_popularity_level"] for r in by_model[models[0]]
                      if "bayes_auc_by_popularity_level" in r]
        if bayes_runs:
            bayes = _mean_of_dicts(bayes_runs)
            lines.append("| " + " | ".join(["Bayes-optimal"] + [f"{bayes[k]:.3f}" for k in levels]) + " |")
    with_recall = [r for r in results if "cold_recall" in r]
    if with_recall:
        ns = list(_mean_of_dicts([r["cold_recall"] for r in with_recall]))
        head = ["model"] + [f"recall@{n}" for n in ns]
        if lines:
            lines.append("")
        lines += ["Recall@N of clicked cold items among each user's cold candidates (Table 5):",
                  "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        random_runs = [r["random_cold_recall"] for r in with_recall if "random_cold_recall" in r]
        if random_runs:  # a random ranking's expected recall, min(N, size) / size
            random = _mean_of_dicts(random_runs)
            lines.append("| " + " | ".join(["RANDOM"] + [f"{random[n]:.3f}" for n in ns]) + " |")
        for m in models:
            means = _mean_of_dicts([r["cold_recall"] for r in by_model[m] if "cold_recall" in r])
            lines.append("| " + " | ".join([m] + [f"{means[n]:.3f}" if n in means else "n/a"
                                                  for n in ns]) + " |")
        bayes_runs = [r["bayes_cold_recall"] for r in by_model[models[0]] if "bayes_cold_recall" in r]
        if bayes_runs:
            bayes = _mean_of_dicts(bayes_runs)
            lines.append("| " + " | ".join(["Bayes-optimal"] + [f"{bayes[n]:.3f}" for n in ns]) + " |")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(model: str) -> str:
    return model.replace("BaseModel", "Base")


SYNTHETIC = "Table 3 ablations on the synthetic Taobao stream"


def plot(rows: List[Dict[str, Any]], path: str, title: Optional[str] = None) -> None:
    """Bars of mean AUC and per-user AUC with one standard deviation, Bayes ceilings as lines
    where the data knows the truth."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    names = [_short(r["model"]) for r in rows]
    for ax, metric, name in zip(axes, ("auc", "user_auc"), ("AUC", "per-user AUC (eq. 11)")):
        means = [r.get(metric, math.nan) for r in rows]
        stds = [r.get(metric + "_std", 0.0) for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue")
        ceiling = rows[0].get(f"bayes_{metric}")
        top = max(m + s for m, s in zip(means, stds))
        if ceiling is not None:
            ax.axhline(ceiling, color="tab:red", ls="--", label=f"Bayes-optimal {ceiling:.3f}")
            ax.legend(loc="lower right")
            top = max(top, ceiling)
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, math.floor((lo - 0.02) * 50) / 50), min(1.0, top + 0.02))
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_title(name)
    fig.suptitle(f"{title or SYNTHETIC} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_differences(differences: Dict[str, List[Dict[str, Any]]], path: str,
                     title: str = "Paired differences by seed") -> None:
    """One row of panels per reference, one panel per metric: each model's mean difference with
    its 95% t-interval as a bar, the seeds' differences as dots, zero as a line."""
    plt = _pyplot()
    refs = list(differences)
    fig, axes = plt.subplots(len(refs), len(METRICS), figsize=(5 * len(METRICS), 0.6 + 2.6 * len(refs)),
                             squeeze=False)
    for i, ref in enumerate(refs):
        diffs = differences[ref]
        for j, metric in enumerate(METRICS):
            ax = axes[i][j]
            ys = list(range(len(diffs)))[::-1]
            for y, d in zip(ys, diffs):
                s = d.get(metric)
                if not s:
                    continue
                if s["low"] is not None:
                    ax.errorbar(s["mean"], y, xerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]],
                                fmt="o", color="tab:blue", capsize=4)
                else:
                    ax.plot(s["mean"], y, "o", color="tab:blue")
                ax.plot(s["values"], [y] * len(s["values"]), "x", color="tab:gray", ms=5)
            ax.axvline(0.0, color="tab:red", lw=1)
            ax.set_yticks(ys, [_short(d["model"]) for d in diffs])
            ax.set_title(f"Δ {NAMES[metric]} vs {_short(ref)}", fontsize=10)
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}, mean and {CONFIDENCE:.0%} t-interval over seeds (x: single seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: List[Dict[str, Any]], path: str, title: str = "Learning curves") -> bool:
    """AUC, per-user AUC and cold-candidate AUC of every evaluation against the training step:
    per model the mean over seeds (line) and each seed (faint). False (no file) without curves."""
    with_curves = [r for r in results if len(r.get("curve") or []) > 1]
    if not with_curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4.2))
    models = list(dict.fromkeys(r["model"] for r in with_curves))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, METRICS):
        for k, model in enumerate(models):
            color = colors[k % len(colors)]
            per_step: Dict[int, List[float]] = {}
            for r in with_curves:
                if r["model"] != model:
                    continue
                pts = [(c["step"], c[metric]) for c in r["curve"] if metric in c]
                if pts:
                    ax.plot(*zip(*pts), color=color, alpha=0.25, lw=0.8)
                for step, v in pts:
                    per_step.setdefault(step, []).append(v)
            if per_step:
                steps = sorted(per_step)
                ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], color=color,
                        lw=1.8, label=_short(model))
        ax.set_xlabel("training step")
        ax.set_title(NAMES[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title} (test split; line: mean over seeds, faint: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def gap_share_table(results: List[Dict[str, Any]], ids: str = "BaseModel+IDs") -> str:
    """Markdown: each model's share of the IDs-to-reference AUC gap (``marn_rec.models.reference``),
    seed by seed and its mean; empty unless BaseModel+IDs and the reference ran."""
    from marn_rec.config import REFERENCE
    from marn_rec.models.reference import gap_share

    by = {(r["model"], r["seed"]): r["auc"] for r in results if "auc" in r}
    seeds = sorted(s for (m, s) in by if m == ids and (REFERENCE, s) in by)
    if not seeds:
        return ""
    lines = [f"Share of the {ids}-to-{REFERENCE} AUC gap closed, (AUC - AUC_IDs) / (AUC_ref - AUC_IDs), "
             "per seed (1: as good as the reference on the true item factors):", "",
             "| model | mean | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "| --- | --- |" + " --- |" * len(seeds)]
    for model in dict.fromkeys(r["model"] for r in results):
        if model in (ids, REFERENCE):
            continue
        shares = [gap_share(by[(model, s)], by[(ids, s)], by[(REFERENCE, s)]) if (model, s) in by else None
                  for s in seeds]
        got = [x for x in shares if x is not None and not math.isnan(x)]
        mean = f"{sum(got) / len(got):+.2f}" if got else "n/a"
        lines.append(f"| {model} | {mean} | " + " | ".join(
            "n/a" if x is None or math.isnan(x) else f"{x:+.2f}" for x in shares) + " |")
    gaps = [by[(REFERENCE, s)] - by[(ids, s)] for s in seeds]
    lines.append(f"| (gap, AUC points) | {100 * sum(gaps) / len(gaps):.2f} | " + " | ".join(
        f"{100 * g:.2f}" for g in gaps) + " |")
    return "\n".join(lines)


def report_text(results: List[Dict[str, Any]], skipped: Optional[Dict[str, str]] = None) -> str:
    """The markdown of a study: the means, the paired differences, Tables 4 and 5, the skipped
    configurations with their reasons."""
    parts = [markdown_table(summarize(results))]
    for ref, diffs in all_differences(results).items():
        parts.append(differences_table(diffs, ref))
    gaps = gap_share_table(results)
    if gaps:
        parts.append(gaps)
    plateau = plateau_table(results)
    if plateau:
        parts.append(plateau)
    twins = twin_differences(results)
    if twins:
        parts.append(differences_table(twins, "the same configuration with every modality"))
    extra = level_and_recall_tables(results)
    if extra:
        parts.append(extra)
    if skipped:
        parts.append("Not run (the data lacks what they need):\n\n" + "\n".join(
            f"- {m}: {reason}" for m, reason in skipped.items()))
    return "\n\n".join(parts)


def write_report(
    results: List[Dict[str, Any]],
    out_dir: str,
    command: str,
    skipped: Optional[Dict[str, str]] = None,
    title: Optional[str] = None,
) -> Tuple[str, str]:
    """Writes results.jsonl, table.md, table.png, differences.png (when a reference ran) and
    curves.png (when the runs evaluated more than once) under ``out_dir``; returns the markdown and
    the path of table.png. ``title`` names the study in the plots (default: the synthetic
    stream's); ``skipped``: configurations not run, with the reason (also saved)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, RESULTS_FILE), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    if skipped is not None:
        with open(os.path.join(out_dir, SKIPPED_FILE), "w") as f:
            json.dump(skipped, f, indent=1)
    table = report_text(results, skipped)
    with open(os.path.join(out_dir, TABLE_FILE), "w") as f:
        f.write(f"`{command}`\n\n{table}\n")
    png = os.path.join(out_dir, TABLE_PNG)
    plot(summarize(results), png, title)
    differences = all_differences(results)
    if differences:
        plot_differences(differences, os.path.join(out_dir, DIFFERENCES_PNG),
                         title=f"{title or SYNTHETIC}: paired differences")
    plot_curves(results, os.path.join(out_dir, CURVES_PNG), title=f"{title or SYNTHETIC}: learning curves")
    return table, png


def read_results(out_dir: str) -> Tuple[List[Dict[str, Any]], str]:
    """The runs of an earlier study and the command that produced them (from table.md). A study
    that was interrupted has only ``results.partial.jsonl`` (its finished runs): read that then."""
    path = os.path.join(out_dir, RESULTS_FILE)
    if not os.path.exists(path):
        path = os.path.join(out_dir, PARTIAL_RESULTS_FILE)
    with open(path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    command = ""
    table = os.path.join(out_dir, TABLE_FILE)
    if os.path.exists(table):
        with open(table) as f:
            command = f.readline().strip().strip("`")
    return results, command


def merge_results(studies: Sequence[Tuple[str, List[Dict[str, Any]]]]) -> List[Dict[str, Any]]:
    """The runs of several studies ``(name, runs)``, in order, each (model, seed) once.

    A study's results.jsonl holds what it merged when it was reported, so merging it again with
    the same sources repeats runs: a repeat with the same AUC is dropped. Two runs of one model and
    seed with different AUCs are two different experiments (another code version, another
    setting) and raise ``ValueError`` naming both studies, rather than be averaged together.
    """
    out: List[Dict[str, Any]] = []
    seen: Dict[Tuple[str, int], Tuple[str, Dict[str, Any]]] = {}
    for name, runs in studies:
        for r in runs:
            key = (r["model"], r["seed"])
            if key in seen:
                first, earlier = seen[key]
                if earlier.get("auc") != r.get("auc"):
                    raise ValueError(
                        f"{r['model']} seed {r['seed']} ran twice with different results: AUC "
                        f"{earlier.get('auc')} in {first} and {r.get('auc')} in {name}; merge only one")
                continue
            seen[key] = (name, r)
            out.append(r)
    return out


def read_skipped(out_dir: str) -> Optional[Dict[str, str]]:
    """The configurations an earlier study skipped, with their reasons (None if not recorded)."""
    path = os.path.join(out_dir, SKIPPED_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
