"""Claims tested against generator knobs: does a module's gain over its ablation appear where the
structure it exploits is present, and shrink where it is absent?

A *claim* is a pair (model, reference), e.g. ("BaseModel+MAF", "BaseModel+CONC"): MAF's per-item
weighting should beat a plain sum. A *setting* is one study (one directory of
``examples/ablation_study.py``) on the synthetic stream with some knobs, e.g. the default stream
and one whose items' modality quality varies. For each claim and setting the paired difference by
seed (:func:`~marn_rec.training.ablation.statistics.paired_differences`), and between two settings
the change of that difference, paired by seed too: the same seed gives the same users, catalogue
and initial weights in both settings, the knobs only change what the modalities show.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from marn_rec.training.ablation.report import read_results
from marn_rec.training.ablation.statistics import format_difference, t_interval

Claim = Tuple[str, str]


def parse_claim(text: str) -> Claim:
    """``"MODEL>REFERENCE"`` -> (model, reference)."""
    model, sep, reference = text.partition(">")
    if not sep or not model.strip() or not reference.strip():
        raise ValueError(f"a claim is MODEL>REFERENCE, got {text!r}")
    return model.strip(), reference.strip()


def _by_seed(results: List[Dict[str, Any]], model: str, metric: str) -> Dict[int, float]:
    return {r["seed"]: r[metric] for r in results if r["model"] == model and metric in r}


def claim_differences(results: List[Dict[str, Any]], claim: Claim, metric: str = "auc") -> Dict[int, float]:
    """``{seed: metric(model) - metric(reference)}`` over the seeds both ran."""
    a, b = (_by_seed(results, m, metric) for m in claim)
    return {s: a[s] - b[s] for s in sorted(a.keys() & b.keys())}


def claim_table(
    settings: Sequence[Tuple[str, List[Dict[str, Any]]]],
    claims: Sequence[Claim],
    metric: str = "auc",
) -> Dict[str, Any]:
    """Per claim: the paired difference in every setting that ran both models, and the change of
    the difference from the first such setting (the baseline) to each other one, paired by seed.

    Returns ``{"metric", "settings": names, "claims": [{"model", "reference", "by_setting":
    {name: interval or None}, "change": {name: interval or None}}]}`` (intervals as
    :func:`t_interval`'s, plus ``"seeds"``).
    """
    out: Dict[str, Any] = {"metric": metric, "settings": [n for n, _ in settings], "claims": []}
    for claim in claims:
        diffs = {name: claim_differences(results, claim, metric) for name, results in settings}
        by_setting: Dict[str, Optional[Dict[str, Any]]] = {}
        for name, d in diffs.items():
            by_setting[name] = dict(t_interval(list(d.values())), seeds=list(d)) if d else None
        change: Dict[str, Optional[Dict[str, Any]]] = {}
        ran = [name for name, d in diffs.items() if d]
        if ran:
            base = ran[0]
            for name in ran[1:]:
                seeds = sorted(diffs[base].keys() & diffs[name].keys())
                change[name] = (dict(t_interval([diffs[name][s] - diffs[base][s] for s in seeds]), seeds=seeds)
                                if seeds else None)
        out["claims"].append({"model": claim[0], "reference": claim[1], "by_setting": by_setting,
                              "baseline": ran[0] if ran else None, "change": change})
    return out


def _verdict(d: Optional[Dict[str, Any]]) -> str:
    if not d or d.get("low") is None:
        return ""
    if d["low"] > 0:
        return " (above 0)"
    if d["high"] < 0:
        return " (below 0)"
    return ""


def markdown(table: Dict[str, Any]) -> str:
    """One row per claim: the difference in each setting, then its change from the baseline."""
    names = table["settings"]
    head = ["claim"] + [f"Δ {table['metric']}: {n}" for n in names] + [f"change {n}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for c in table["claims"]:
        cells = [f"{c['model']} − {c['reference']}"]
        for n in names:
            d = c["by_setting"].get(n)
            cells.append(format_difference(d) + _verdict(d) + (f" n={d['n']}" if d else ""))
        for n in names[1:]:
            d = c["change"].get(n)
            cells.append((format_difference(d) + _verdict(d) + f" vs {c['baseline']}") if d else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: Dict[str, Any], path: str) -> None:
    """Each claim's difference per setting, with the 95% interval as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = table["settings"]
    claims = table["claims"]
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * len(claims) * len(names) / 2), 4.2))
    width = 0.8 / max(1, len(names))
    for j, n in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, c in enumerate(claims):
            d = c["by_setting"].get(n)
            if not d:
                continue
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            ys.append(d["mean"])
            lo.append(d["mean"] - (d["low"] if d["low"] is not None else d["mean"]))
            hi.append((d["high"] if d["high"] is not None else d["mean"]) - d["mean"])
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=n)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(claims)))
    ax.set_xticklabels([f"{c['model']}\n− {c['reference']}".replace("BaseModel+", "")
                        for c in claims], fontsize=8)
    ax.set_ylabel(f"paired Δ {table['metric']} (95% t-interval over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def claims_report(
    settings: Sequence[Tuple[str, str]],
    claims: Sequence[Claim],
    out_path: str,
    metrics: Sequence[str] = ("auc", "cold_auc"),
) -> str:
    """Reads each setting's study directory, writes ``out_path`` (.md), its .json and .png (the
    first metric); returns the markdown."""
    read = [(name, d, *read_results(d)) for name, d in settings]
    loaded = [(name, results) for name, _, results, _ in read]
    parts = ["Settings: " + "; ".join(f"{n} = `{d}` ({command or 'command not recorded'})"
                                      for n, d, _, command in read)]
    tables = []
    for metric in metrics:
        t = claim_table(loaded, claims, metric)
        tables.append(t)
        parts.append(f"\n{metric}: mean [95% t-interval over seeds] of the paired difference\n")
        parts.append(markdown(t))
    text = "\n".join(parts) + "\n"
    stem = os.path.splitext(out_path)[0]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(tables, f, indent=1)
    plot(tables[0], stem + ".png")
    return text


__all__ = ["Claim", "claim_differences", "claim_table", "claims_report", "markdown", "parse_claim", "plot"]
