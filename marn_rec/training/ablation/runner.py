"""Running a study: every (configuration, seed) is :func:`marn_rec.training.loop.train` in its own
single-process group (world size 1); ``jobs`` runs go side by side, one per core, which on a small
machine beats sharding each run over processes that then wait on each other's all-to-alls.

On a prepared directory (``TrainConfig.data_dir``) only the configurations whose modalities the
data has are run (:func:`applicable_models`): on MovieLens-100K (no image) BaseModel+IMAGE is
skipped with the reason, and the multimodal ones keep IDs, title and statistics.
"""

import json
import os
import shutil
from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

from tqdm import tqdm

from marn_rec.config import ABLATIONS
from marn_rec.training.ablation.report import PARTIAL_RESULTS_FILE
from marn_rec.training.loop import TrainConfig
from marn_rec.training.worker_pool import study_pool

# What each evaluation record of a run's metrics.jsonl contributes to its learning curve.
CURVE_KEYS = ("auc", "user_auc", "cold_auc", "warm_auc", "bayes_auc")


def run_dir(base: TrainConfig, model: str, seed: int) -> str:
    return os.path.join(base.out_dir, f"{model.replace('+', '_')}_seed{seed}")


def read_curve(out_dir: str) -> List[Dict[str, Any]]:
    """The evaluation records of a run's ``metrics.jsonl`` (step and the :data:`CURVE_KEYS`)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    curve = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("split") == "eval":
                curve.append({"step": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r}})
    return curve


def applicable_models(base: TrainConfig, models: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """The configurations of ``models`` that can be built on ``base``'s data, and the reason each
    other one cannot (``{model: reason}``).

    On the synthetic stream every configuration applies. On a prepared directory a configuration
    applies when :func:`~marn_rec.training.sources.model_config_for_manifest` leaves it a modality
    (``config.ablation`` keeps the preset's modalities; absent ones are dropped).
    """
    if not base.data_dir:
        for m in models:
            replace(base, model=m).model_config()  # raises ValueError for a bad configuration
        return list(models), {}
    from marn_rec.data.prepared import PreparedDataset
    from marn_rec.training.sources import model_config_for_manifest

    manifest = PreparedDataset(base.data_dir).manifest
    kept, skipped = [], {}
    for m in models:
        try:
            model_config_for_manifest(manifest, replace(base, model=m).model_config())
        except ValueError as e:
            skipped[m] = str(e)
        else:
            kept.append(m)
    return kept, skipped


def _run_one(args: Tuple[TrainConfig, int]) -> Dict[str, Any]:
    cfg, threads = args
    import torch

    torch.set_num_threads(threads)
    from marn_rec.quiet import quiet_libraries
    from marn_rec.training.loop import free_port, train

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    import time

    start = time.perf_counter()
    with quiet_libraries():
        result = train(cfg)
    seconds = time.perf_counter() - start
    import torch.distributed as dist

    dist.destroy_process_group()
    return {"model": cfg.model, "seed": cfg.seed, **result, "seconds": seconds,
            "curve": read_curve(cfg.out_dir)}


def run_study(
    base: TrainConfig,
    seeds: Sequence[int],
    models: Sequence[str] = tuple(ABLATIONS),
    jobs: int = 2,
    suffix: str = "",
) -> List[Dict[str, Any]]:
    """Trains every model with every seed, seed after seed; returns one evaluation record per run
    (its last evaluation, ``seconds`` of wall time and the ``curve`` of its evaluations), in the
    order of ``models`` then seeds, and appends each to ``OUT_DIR/results.partial.jsonl`` as it
    finishes. ``models`` should be :func:`applicable_models`' first list. ``suffix`` is appended
    to the model names of the records (e.g. " without statistic" on a modality view)."""
    runs = [
        # No checkpoint before the last step: a study never resumes a run (it starts afresh).
        replace(base, model=m, seed=s, progress=False, resume="never", checkpoint_every=0,
                out_dir=run_dir(base, m, s))
        for s in seeds
        for m in models
    ]
    for r in runs:  # a study always starts fresh
        shutil.rmtree(os.path.join(r.out_dir, "checkpoints"), ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results = []
    # Each finished run is appended here at once, so an interrupted study keeps what it ran
    # (examples/ablation_study.py --report-only reports from it).
    os.makedirs(base.out_dir, exist_ok=True)
    partial = os.path.join(base.out_dir, PARTIAL_RESULTS_FILE)
    if os.path.exists(partial):
        os.remove(partial)
    with study_pool(jobs) as pool:
        for res in tqdm(pool.imap_unordered(_run_one, [(r, threads) for r in runs]),
                        total=len(runs), desc="ablation runs"):
            res["configuration"] = res["model"]
            res["model"] += suffix
            results.append(res)
            with open(partial, "a") as f:
                f.write(json.dumps(res) + "\n")
    return sorted(results, key=lambda r: (list(models).index(r["configuration"]), r["seed"]))
