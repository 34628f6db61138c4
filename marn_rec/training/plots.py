"""Plots of a training run's metrics.jsonl: AUC over steps, and AUC by popularity level (Table 4)."""

import json
from typing import Any, Dict, List


def read_metrics(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(metrics_path: str, png_path: str) -> None:
    """Left: AUC, per-user AUC and cold-candidate AUC of the evaluations, with their Bayes-optimal
    ceilings where the data knows the truth. Middle: the training losses of eq. 10 and the
    adversarial game's diagnostics (scale of ``s`` and ``c``, mean ``w_m``). Right, where the data
    has popularity levels: AUC by candidate popularity level at the last evaluation (Table 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    evals = [r for r in records if r.get("split") == "eval"]
    trains = [r for r in records if r.get("split") == "train"]
    if not evals:
        raise ValueError(f"{metrics_path}: no evaluation records to plot")
    last = evals[-1]
    levels_known = "auc_by_popularity_level" in last
    fig, axes = plt.subplots(1, 3 if levels_known else 2, figsize=(17 if levels_known else 12, 4.5))
    left, middle = axes[0], axes[1]
    steps = [r["step"] for r in evals]
    for key, color in (("auc", "tab:blue"), ("user_auc", "tab:green"), ("cold_auc", "tab:purple")):
        if all(key in r for r in evals):
            left.plot(steps, [r[key] for r in evals], "o-", color=color, label=key)
            if f"bayes_{key}" in last:
                left.axhline(last[f"bayes_{key}"], color=color, ls="--", lw=1, label=f"bayes_{key}")
    left.set_xlabel("step")
    left.set_title("evaluation (dashed: Bayes-optimal)" if "bayes_auc" in last else "evaluation")
    left.legend(fontsize=8)
    train_steps = [r["step"] for r in trains]
    for key in ("ctr_loss", "d0_loss", "d1_loss", "ds_loss", "s_rms", "c_rms", "w_mean"):
        if trains and all(key in r for r in trains):
            middle.plot(train_steps, [r[key] for r in trains], ".-", label=key)
    middle.set_xlabel("step")
    middle.set_title("training: losses (eq. 10) and the adversarial game")
    middle.legend(fontsize=8)
    if levels_known:
        right = axes[2]
        levels = sorted(int(k) for k in last["auc_by_popularity_level"])
        width = 0.4
        right.bar([k - width / 2 for k in levels],
                  [last["auc_by_popularity_level"][str(k)] for k in levels], width, label="model")
        if "bayes_auc_by_popularity_level" in last:
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
