"""Plots of a training run's metrics.jsonl: AUC over steps, and AUC by popularity level (Table 4)."""

import json
from typing import Any, Dict, List


def read_metrics(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(metrics_path: str, png_path: str) -> None:
    """Left: AUC and per-user AUC of the evaluations with their Bayes-optimal ceilings. Right: AUC
    by candidate popularity level at the last evaluation, beside the Bayes-optimal AUC per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in read_metrics(metrics_path) if r.get("split") == "eval"]
    if not evals:
        raise ValueError(f"{metrics_path}: no evaluation records to plot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in evals]
    for key, color in (("auc", "tab:blue"), ("user_auc", "tab:green"), ("cold_auc", "tab:purple")):
        if all(key in r for r in evals):
            left.plot(steps, [r[key] for r in evals], "o-", color=color, label=key)
            left.axhline(evals[-1][f"bayes_{key}"], color=color, ls="--", lw=1,
                         label=f"bayes_{key}")
    left.set_xlabel("step")
    left.set_title("evaluation (dashed: Bayes-optimal from the true click probability)")
    left.legend(fontsize=8)
    last = evals[-1]
    levels = sorted(int(k) for k in last["auc_by_popularity_level"])
    width = 0.4
    right.bar([k - width / 2 for k in levels],
              [last["auc_by_popularity_level"][str(k)] for k in levels], width, label="model")
    right.bar([k + width / 2 for k in levels],
              [last["bayes_auc_by_popularity_level"][str(k)] for k in levels], width,
              label="Bayes-optimal", color="tab:red", alpha=0.6)
    right.set_ylim(0.4, 1.0)
    right.set_xlabel("candidate popularity level (0 = least popular)")
    right.set_title(f"AUC by popularity level, step {last['step']} (paper Table 4)")
    right.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
