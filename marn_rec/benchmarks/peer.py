"""A peer from an established library on the same samples: deepctr-torch's DIN trained on a prepared
directory, scored with marn_rec's own metric functions, beside a Table 3 study of the same data.

deepctr-torch lives in its own environment, ``benchmarks/peer/.venv`` (``benchmarks/peer/setup.sh``),
never in marn_rec's. Each seed is one run of ``benchmarks/peer/din_worker.py`` under that
environment's Python (one thread, ``jobs`` side by side); the worker writes the test scores after
every epoch with the labels, users and cold flags of the test samples. Here, in marn_rec's
environment, the samples are checked to be the prepared test split's, in its order, and scored with
:func:`marn_rec.training.evaluation.evaluation_metrics`: the same AUC, per-user AUC (eq. 11) and
cold-candidate AUC definitions as every marn_rec run.

Comparison with the marn_rec configurations: a DIN seed and a marn_rec seed share nothing (another
library's initialisation and batch order), so DIN's differences are differences of means with
Welch's t-interval, not paired ones.
"""

import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch

from marn_rec.training.ablation.report import (
    METRICS,
    NAMES,
    markdown_table,
    plot,
    plot_curves,
)
from marn_rec.training.ablation.statistics import summarize, welch_interval
from marn_rec.training.evaluation import COLD, evaluation_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_DIR = os.path.join(REPO, "benchmarks", "peer")
PEER_PYTHON = os.path.join(PEER_DIR, ".venv", "bin", "python")
WORKER = os.path.join(PEER_DIR, "din_worker.py")
DIN = "DIN (deepctr-torch)"
DIN_STATISTICS = "DIN + statistics (deepctr-torch)"


def peer_python_problem(python: str = PEER_PYTHON) -> Optional[str]:
    """Why ``python`` cannot run the peer (None when it can import deepctr_torch)."""
    if not os.path.exists(python):
        return f"{python} does not exist: run bash benchmarks/peer/setup.sh first"
    probe = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('deepctr-torch'), "
                       "m.version('torch'), m.version('scikit-learn'))"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"{python} cannot see deepctr-torch: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def peer_versions(python: str = PEER_PYTHON) -> Dict[str, str]:
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p "
                       "in ('deepctr-torch', 'torch', 'scikit-learn', 'numpy')}))"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def worker_command(
    data_dir: str, seed: int, epochs: int, out: str, python: str = PEER_PYTHON,
    statistics: bool = False, extra: Sequence[str] = (),
) -> List[str]:
    cmd = [python, WORKER, "--data", data_dir, "--seed", str(seed), "--epochs", str(epochs), "--out", out]
    if statistics:
        cmd.append("--statistics")
    return cmd + list(extra)


def prepared_test_facts(data_dir: str) -> Dict[str, np.ndarray]:
    """label, user, candidate_cold and candidate of the prepared test split, in file order."""
    t = pq.read_table(os.path.join(data_dir, "test.parquet"),
                      columns=["label", "user", "candidate_cold", "candidate"])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def score_run(npz: str, data_dir: str, model: str, seed: int,
              recall_at: Sequence[int] = (1, 3, 5)) -> Dict[str, Any]:
    """The evaluation record of one peer run: marn_rec's metrics of its last epoch's scores, and
    the ``curve`` of every epoch (``step`` = batches of training seen, as marn_rec's runs count)."""
    with np.load(npz) as z:
        got = {k: z[k] for k in z.files}
    facts = prepared_test_facts(data_dir)
    for key in ("label", "user", "candidate_cold", "candidate"):
        if got[key].shape != facts[key].shape or not np.array_equal(got[key].astype(facts[key].dtype), facts[key]):
            raise ValueError(f"{npz}: the peer's test {key} differ from {data_dir}/test.parquet "
                             "(not the same samples)")
    tensors = {"label": torch.from_numpy(facts["label"].astype(np.float32)),
               "user": torch.from_numpy(facts["user"].astype(np.int64)),
               COLD: torch.from_numpy(facts["candidate_cold"].astype(bool))}
    steps = int(got["steps_per_epoch"])
    curve = []
    last: Dict[str, Any] = {}
    for epoch, scores in enumerate(got["scores"]):
        last = evaluation_metrics({"score": torch.from_numpy(scores.astype(np.float32)), **tensors}, recall_at)
        curve.append({"step": (epoch + 1) * steps, **{k: last[k] for k in METRICS if k in last}})
    return {"model": model, "seed": seed, **last, "epochs": len(got["scores"]),
            "seconds": float(np.sum(got["seconds"])), "curve": curve}


def run_peer(
    data_dir: str,
    seeds: Sequence[int],
    epochs: int,
    out_dir: str,
    python: str = PEER_PYTHON,
    jobs: int = 2,
    statistics: bool = False,
    extra: Sequence[str] = (),
) -> List[Dict[str, Any]]:
    """Trains DIN once per seed (``jobs`` worker processes side by side) and scores each run."""
    os.makedirs(out_dir, exist_ok=True)
    model = DIN_STATISTICS if statistics else DIN
    tag = "din_stats" if statistics else "din"
    pending = [(s, os.path.join(out_dir, f"{tag}_seed{s}.npz")) for s in seeds]
    running: List[Tuple[int, str, subprocess.Popen, Any]] = []
    done: List[Tuple[int, str]] = []
    while pending or running:
        while pending and len(running) < jobs:
            seed, npz = pending.pop(0)
            log = open(os.path.join(out_dir, f"{tag}_seed{seed}.log"), "w")
            cmd = worker_command(data_dir, seed, epochs, npz, python, statistics, extra)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            running.append((seed, npz, proc, log))
        time.sleep(1.0)
        for item in list(running):
            seed, npz, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                for _, _, other, _ in running:
                    other.terminate()
                raise RuntimeError(f"DIN seed {seed} failed (exit {proc.returncode}); see {log.name}")
            print(f"DIN seed {seed} done", flush=True)
            done.append((seed, npz))
    return [score_run(npz, data_dir, model, seed) for seed, npz in sorted(done)]


def welch_table(peer: List[Dict[str, Any]], others: List[Dict[str, Any]]) -> str:
    """Each other model's mean minus the peer's, per metric, with Welch's 95% t-interval."""
    peer_name = peer[0]["model"]
    head = ["model"] + [f"Δ {NAMES[m]} vs {peer_name}" for m in METRICS]
    lines = [f"Minus {peer_name}: difference of means over seeds, [95% Welch t-interval] (unpaired: "
             "the two libraries' seeds share nothing):", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model in dict.fromkeys(r["model"] for r in others):
        cells = [model]
        for m in METRICS:
            a = [r[m] for r in others if r["model"] == model and m in r]
            b = [r[m] for r in peer if m in r]
            if not a or not b:
                cells.append("n/a")
                continue
            w = welch_interval(a, b)
            cells.append(f"{w['mean']:+.4f}" + (f" [{w['low']:+.4f}, {w['high']:+.4f}]" if w["low"] is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_peer_report(
    peer: List[Dict[str, Any]],
    others: List[Dict[str, Any]],
    out_dir: str,
    command: str,
    settings: str,
    title: str = "DIN (deepctr-torch) beside the Table 3 configurations",
) -> str:
    """Writes results.jsonl (the peer's runs), table.md (mean ± std of the peer and of ``others``,
    the differences with Welch intervals), table.png and curves.png; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        for r in peer:
            f.write(json.dumps(r) + "\n")
    combined = others + peer
    parts = [settings, markdown_table(summarize(combined))]
    if others:
        parts.append(welch_table(peer, others))
    per_epoch = ["| epoch | step | " + " | ".join(NAMES[m] for m in METRICS) + " |",
                 "|" + " --- |" * (2 + len(METRICS))]
    for model in dict.fromkeys(r["model"] for r in peer):
        runs = [r for r in peer if r["model"] == model]
        for e in range(min(len(r["curve"]) for r in runs)):
            cells = [f"{model} {e + 1}", str(runs[0]["curve"][e]["step"])]
            for m in METRICS:
                vals = [r["curve"][e][m] for r in runs if m in r["curve"][e]]
                cells.append(f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.4f}"
                             if vals else "n/a")
            per_epoch.append("| " + " | ".join(cells) + " |")
    parts.append("The peer after each epoch (test split, mean ± std over seeds):\n\n" + "\n".join(per_epoch))
    text = "\n\n".join(parts)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(f"`{command}`\n\n{text}\n")
    plot(summarize(combined), os.path.join(out_dir, "table.png"), title)
    plot_curves(combined, os.path.join(out_dir, "curves.png"), title=f"{title}: learning curves")
    return text


def read_peer_results(out_dir: str, data_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """The runs of an earlier peer study: its results.jsonl, or, for a study that was stopped
    before it wrote one, its finished runs' score files scored again (needs ``data_dir``)."""
    path = os.path.join(out_dir, "results.jsonl")
    if os.path.exists(path) or data_dir is None:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    runs = []
    for tag, model in (("din", DIN), ("din_stats", DIN_STATISTICS)):
        for name in sorted(os.listdir(out_dir)):
            m = re.fullmatch(rf"{tag}_seed(\d+)\.npz", name)
            if m:
                runs.append(score_run(os.path.join(out_dir, name), data_dir, model, int(m.group(1))))
    if not runs:
        raise FileNotFoundError(f"{out_dir}: neither results.jsonl nor finished runs (*.npz)")
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``benchmarks/peer_din.py``: see its docstring."""
    import argparse
    import shlex

    from marn_rec.training.ablation.report import read_results

    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=3, help="passes over the training split per run")
    p.add_argument("--statistics", action="store_true",
                   help="DIN also embeds the statistic buckets (as marn_rec's statistic modality)")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                   help="out-dirs of an ablation study (examples/ablation_study.py --data ...) or of "
                        "another peer run whose results go beside this one's")
    p.add_argument("--jobs", type=int, default=2, help="DIN runs side by side (one thread each)")
    p.add_argument("--python", default=PEER_PYTHON, help="the peer environment's Python")
    p.add_argument("--out-dir", default="runs/peer_din")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from OUT_DIR/results.jsonl")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.jobs < 1:
        p.error("--epochs and --jobs must be positive")
    if len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds lists a seed twice: {a.seeds}")
    if not os.path.isfile(os.path.join(a.data, "manifest.json")):
        p.error(f"--data {a.data}: not a prepared directory (no manifest.json)")
    others: List[Dict[str, Any]] = []
    for d in a.compare:
        if not os.path.isfile(os.path.join(d, "results.jsonl")):
            p.error(f"--compare {d}: no results.jsonl there")
        others += read_results(d)[0]
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    settings_path = os.path.join(a.out_dir, "settings.txt")
    if a.report_only:
        try:
            peer = read_peer_results(a.out_dir, a.data)
        except FileNotFoundError as e:
            p.error(f"--report-only: {e}")
        table_md = os.path.join(a.out_dir, "table.md")
        if os.path.exists(table_md):
            with open(table_md) as f:
                command = f.readline().strip().strip("`")
        with open(settings_path) as f:
            settings = f.read().strip()
    else:
        problem = peer_python_problem(a.python)
        if problem:
            p.error(problem)
        versions = peer_versions(a.python)
        settings = (
            f"DIN of deepctr-torch {versions['deepctr-torch']} (torch {versions['torch']}, "
            f"scikit-learn {versions['scikit-learn']}), benchmarks/peer/din_worker.py: embeddings "
            f"item_id 32-d, the other features 16-d (marn_rec's small-preset widths); DIN's defaults "
            f"otherwise (attention MLP (64, 16) with Dice, DNN (256, 128) ReLU, L2 1e-6 on "
            f"embeddings, init std 1e-4); {'with' if a.statistics else 'without'} the statistic "
            f"buckets; optimizer adam at deepctr-torch's default lr 0.001, batch 256, {a.epochs} "
            f"epoch(s), one thread per run; not tuned. Metrics: marn_rec.training.evaluation on the "
            f"same test samples; seeds {sorted(a.seeds)}."
        )
        os.makedirs(a.out_dir, exist_ok=True)
        with open(settings_path, "w") as f:
            f.write(settings + "\n")
        peer = run_peer(a.data, a.seeds, a.epochs, a.out_dir, a.python, a.jobs, a.statistics)
    text = write_peer_report(peer, others, a.out_dir, command, settings)
    print(text)
    print(f"\nwritten: {a.out_dir}/table.md, table.png, curves.png, results.jsonl")
    return 0
