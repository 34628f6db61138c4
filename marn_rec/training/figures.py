"""The paper's figures (and the ceiling tables) from our own runs.

- Figure 4 (:func:`maf_attention_norms`, :func:`attention_norms_from_checkpoint`,
  :func:`plot_attention_heatmap`): mean l2-norm of MAF's vector attention ``atten_m`` (eq. 3) per
  modality, for items of each category group. The paper picks ten thousand random items of each
  of a few Taobao categories; the synthetic stream's categories fall into three groups by the
  modality that carries their click signal (image, statistics, title), so the rows here are
  those groups (or any integer labelling of the items).
- Figure 6(a) (:func:`adversarial_curves`, :func:`plot_adversarial_loss`): the training losses over
  steps from a run's ``metrics.jsonl`` (window means): the total and CTR losses, eq. 7's ``L_ADV``
  (``d1_loss``, the value both sides of the game see) and D1's unweighted cross-entropy ``d1_ce``
  (ln M when D1 is confused).
- Figure 6(b) (:func:`lambda_sweep`, :func:`plot_lambda_sweep`): AUC against lambda0 (the paper
  sweeps 0.01 to 1.8), one single-process training run per value; a run that stops with
  ``TrainingDiverged`` is recorded as such, never as an AUC.
- The reachable ceiling (:func:`train_runs`, :func:`ceiling_tables`): Table 3-like AUCs beside the
  reference trained on the generator's true item factors (:mod:`marn_rec.models.reference`), each
  model's share of the IDs-to-reference gap, and Tables 4 and 5 as the paper measures them.

``examples/paper_figures.py`` is the command line.
"""

import json
import math
import os
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from marn_rec.batch import ItemFeatures
from marn_rec.features import TITLE_WORDS
from marn_rec.training.worker_pool import study_pool

# Paper Figure 6(b)'s range of lambda0 (section 4.1: "tuned ranging from 0.01 to 1.8").
PAPER_LAMBDAS: Tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.8)
SWEEP_RESULTS = "lambda_sweep.jsonl"


# ---- Figure 4 ----


def _tower_inputs(features: ItemFeatures) -> Tuple[Any, Any, Any]:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    title = None
    if features.title_values is not None and features.title_lengths is not None:
        title = KeyedJaggedTensor(keys=[TITLE_WORDS], values=features.title_values.long(),
                                  lengths=features.title_lengths.long())
    return features.sparse_kjt(), title, features.image


@torch.no_grad()
def maf_attention_norms(
    tower: torch.nn.Module,
    item_features: Callable[[torch.Tensor], ItemFeatures],
    item_ids: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    chunk: int = 2048,
) -> torch.Tensor:
    """[num_groups, M] mean over the items of each group of ``||atten_m||_2`` (eq. 3's vector
    attention of modality m, M = the tower's modalities in its order); NaN rows for empty groups.

    Args:
        tower: a :class:`~marn_rec.models.tower.MARNTower` with ``fusion="maf"`` (unsharded).
        item_features: the items' features (a synthetic catalogue's ``features``).
        item_ids: [U] items to average over; groups: [U] their group, 0 .. num_groups - 1.
    """
    from marn_rec.modules.maf import MultimodalAttentionFusion

    fusion = getattr(tower, "fusion", None)
    if not isinstance(fusion, MultimodalAttentionFusion):
        raise ValueError("Figure 4 needs a tower with MAF (fusion='maf'); this one has "
                         f"{type(fusion).__name__}")
    m = len(tower.config.modalities)
    sums = torch.zeros(num_groups, m, dtype=torch.float64)
    counts = torch.zeros(num_groups, dtype=torch.float64)
    for specific, grp in zip(_specific_features(tower, item_features, item_ids, chunk), groups.split(chunk)):
        atten = fusion.weights(specific)  # [U, M, d]
        sums.index_add_(0, grp.long(), atten.norm(dim=2).double().cpu())
        counts.index_add_(0, grp.long(), torch.ones(grp.numel(), dtype=torch.float64))
    return (sums / counts[:, None]).float()


@torch.no_grad()
def _specific_features(tower: torch.nn.Module, item_features: Callable[[torch.Tensor], ItemFeatures],
                       item_ids: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """The tower's modality-specific features ``s_m`` ([chunk, M, d], eval mode) of ``item_ids``."""
    was_training = tower.training
    tower.eval()
    try:
        for ids in item_ids.split(chunk):
            yield tower.projection.specific(tower.embedding(*_tower_inputs(item_features(ids))))
    finally:
        tower.train(was_training)


def linear_probe_accuracy(x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          train_share: float = 0.7, seed: int = 0) -> float:
    """Held-out accuracy of a least-squares linear read-out (one-hot targets, a bias) of
    ``labels`` [N] from ``x`` [N, k], fitted on a random ``train_share`` of the rows."""
    n = labels.numel()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit_rows, test_rows = order[: int(train_share * n)], order[int(train_share * n):]
    if fit_rows.numel() == 0 or test_rows.numel() == 0:
        raise ValueError(f"a probe needs rows to fit and to test; got {n} rows")
    design = torch.cat([x.double(), torch.ones(n, 1, dtype=torch.float64)], 1)
    target = torch.nn.functional.one_hot(labels.long(), num_classes).double()
    weights = torch.linalg.lstsq(design[fit_rows], target[fit_rows]).solution
    return float(((design[test_rows] @ weights).argmax(1) == labels[test_rows]).double().mean())


def modality_group_probe(
    tower: torch.nn.Module,
    item_features: Callable[[torch.Tensor], ItemFeatures],
    item_ids: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    chunk: int = 2048,
) -> Dict[str, float]:
    """Per modality, how well a linear map of ``s_m`` alone tells the items' groups apart (held-out
    accuracy of :func:`linear_probe_accuracy`), and ``"chance"``, the largest group's share.

    Eq. 3 computes modality m's gate from ``s_m`` alone, through a linear map and tanh: a gate can
    weigh its modality per group (the paper's Figure 4) only as far as ``s_m`` shows the group.
    """
    specific = torch.cat(list(_specific_features(tower, item_features, item_ids, chunk)))
    out = {name: linear_probe_accuracy(specific[:, k], groups, num_groups)
           for k, name in enumerate(tower.config.modalities)}
    out["chance"] = float(torch.bincount(groups, minlength=num_groups).max()) / groups.numel()
    return out


def items_by_group(catalog: Any, per_group: int = 10_000, seed: int = 0,
                   include_cold: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_group`` items of each category group of a synthetic catalogue, drawn uniformly
    without replacement (the paper's "randomly select ten thousand items for each category"):
    (item IDs, group index into ``MODALITY_GROUPS``)."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(catalog.num_catalog_items)
    if not include_cold:
        ranks = ranks[~catalog.is_cold]
    group = catalog.category_group[catalog.category[ranks]]
    picked_ranks, picked_groups = [], []
    for k in range(int(catalog.category_group.max()) + 1):
        members = ranks[group == k]
        take = members[torch.randperm(members.numel(), generator=g)[:per_group]]
        picked_ranks.append(take)
        picked_groups.append(torch.full((take.numel(),), k, dtype=torch.long))
    ranks = torch.cat(picked_ranks)
    return catalog.ids_of_ranks(ranks), torch.cat(picked_groups)


IMAGE_QUALITY_GROUPS = ("image shown", "image uninformative", "image missing")


def items_by_image_quality(catalog: Any, per_group: int = 10_000,
                           seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_group`` random items of each image quality (:data:`IMAGE_QUALITY_GROUPS`, the
    generator's ``missing_image_prob`` / ``uninformative_image_prob``): (item IDs, group)."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(catalog.num_catalog_items)
    q = catalog.modality_quality(ranks)
    group = torch.where(q.image_missing, 2, torch.where(q.image_uninformative, 1, 0))
    picked, groups = [], []
    for k in range(len(IMAGE_QUALITY_GROUPS)):
        members = ranks[group == k]
        take = members[torch.randperm(members.numel(), generator=g)[:per_group]]
        picked.append(take)
        groups.append(torch.full((take.numel(),), k, dtype=torch.long))
    return catalog.ids_of_ranks(torch.cat(picked)), torch.cat(groups)


def attention_norms_from_checkpoint(
    path: str, per_group: int = 10_000, seed: int = 0, verify: bool = True, by: str = "category"
) -> Dict[str, Any]:
    """Figure 4 of a trained MARN (or BaseModel+MAF...) checkpoint of the synthetic stream: the
    tower is read unsharded, the catalogue rebuilt from the checkpoint's ``meta.json``.

    ``by``: "category" (the paper's rows: the category groups by signal modality) or
    "image_quality" (items with an image shown, uninformative or missing: does the attention
    follow an item's own modality quality?).

    Returns ``{"norms": [[...]] (groups x modalities), "group_probe": {modality: accuracy,
    "chance": ...} (:func:`modality_group_probe`), "groups": names, "modalities": names, "items":
    per group, "checkpoint": path, "step": step}``.
    """
    from marn_rec.data.synthetic import MODALITY_GROUPS, ItemCatalog
    from marn_rec.serving.extract import load_tower
    from marn_rec.serving.sources import synthetic_config_from_meta
    from marn_rec.serving.weights import CheckpointInfo

    info = CheckpointInfo(path, verify=verify)
    tower = load_tower(info)
    catalog = ItemCatalog(synthetic_config_from_meta(info.meta["data"]))
    if by == "category":
        ids, groups = items_by_group(catalog, per_group, seed)
        names = [f"{g} signal" for g in MODALITY_GROUPS]
    elif by == "image_quality":
        ids, groups = items_by_image_quality(catalog, per_group, seed)
        names = list(IMAGE_QUALITY_GROUPS)
    else:
        raise ValueError(f"by must be 'category' or 'image_quality', got {by!r}")
    norms = maf_attention_norms(tower, catalog.features, ids, groups, len(names))
    return {
        "norms": norms.tolist(),
        "group_probe": modality_group_probe(tower, catalog.features, ids, groups, len(names)),
        "groups": names,
        "modalities": list(info.config.tower.modalities),
        "items": torch.bincount(groups, minlength=len(names)).tolist(),
        "checkpoint": info.path,
        "step": info.step,
    }


def plot_attention_heatmap(result: Dict[str, Any], png_path: str, title: Optional[str] = None) -> None:
    """Paper Figure 4: rows the item groups, columns the modalities, colour and numbers the mean
    l2-norm of the attention."""
    plt = _pyplot()
    norms = torch.tensor(result["norms"])
    fig, ax = plt.subplots(figsize=(1.6 * norms.shape[1] + 2.5, 0.8 * norms.shape[0] + 1.8))
    image = ax.imshow(norms.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(norms.shape[1]), result["modalities"])
    ax.set_yticks(range(norms.shape[0]), result["groups"])
    for i in range(norms.shape[0]):
        for j in range(norms.shape[1]):
            ax.text(j, i, f"{float(norms[i, j]):.2f}", ha="center", va="center", color="w")
    fig.colorbar(image, ax=ax, label="mean ||atten_m||_2")
    ax.set_title(title or "MAF attention per modality and category group (paper Figure 4)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


# ---- Figure 6(a) ----

CURVE_KEYS = ("lambda", "total_loss", "ctr_loss", "d0_loss", "d1_loss", "adv_loss", "ds_loss",
              "d1_ce", "d1_accuracy", "d0_accuracy", "w_mean", "s_rms", "c_rms")


def read_metrics(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def adversarial_curves(metrics_path: str) -> Dict[str, List[float]]:
    """``{"step": [...], key: [...]}`` of the training records of a ``metrics.jsonl`` for every
    key of :data:`CURVE_KEYS` that all of them hold (window means over each evaluation interval)."""
    trains = [r for r in read_metrics(metrics_path) if r.get("split") == "train"]
    if not trains:
        raise ValueError(f"{metrics_path}: no training records")
    out: Dict[str, List[float]] = {"step": [r["step"] for r in trains]}
    for key in CURVE_KEYS:
        if all(key in r for r in trains):
            out[key] = [float(r[key]) for r in trains]
    return out


def plot_adversarial_loss(metrics_path: str, png_path: str, num_modalities: int = 4) -> None:
    """Paper Figure 6(a) and the game behind it, three panels: the total and CTR losses; the
    adversarial loss ``L_ADV`` and D1's cross-entropy against ln M (a confused D1), with lambda on a
    second axis; and the state of the invariant branch: the D0 and Ds losses, the mean ``w_m`` and
    the rms of ``s`` and ``c`` (``rep = s + c``: a ``c`` that fades means DDMA's branch collapsed)."""
    plt = _pyplot()
    c = adversarial_curves(metrics_path)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.4))
    for key in ("total_loss", "ctr_loss"):
        if key in c:
            left.plot(c["step"], c[key], ".-", label=key)
    left.set_xlabel("step")
    left.set_title("training loss (window means)")
    left.legend()
    for key, label in (("d1_loss", "L_ADV (eq. 7, sum over modalities of w_m CE)"),
                       ("d1_ce", "D1 cross-entropy (unweighted)")):
        if key in c:
            middle.plot(c["step"], c[key], ".-", label=label)
    middle.axhline(math.log(num_modalities), color="grey", ls="--", lw=1, label=f"ln {num_modalities}")
    middle.set_xlabel("step")
    middle.set_title("adversarial loss (paper Figure 6(a))")
    if "lambda" in c:
        twin = middle.twinx()
        twin.plot(c["step"], c["lambda"], color="tab:red", lw=0.8, alpha=0.6)
        twin.set_ylabel("lambda", color="tab:red")
    middle.legend(fontsize=8)
    for key, label in (("d0_loss", "L_D0"), ("ds_loss", "L_Ds"), ("w_mean", "mean w_m"),
                       ("s_rms", "rms of s"), ("c_rms", "rms of c")):
        if key in c:
            right.plot(c["step"], c[key], ".-", label=label)
    right.axhline(math.log(num_modalities), color="grey", ls="--", lw=1)
    right.set_xlabel("step")
    right.set_title("the invariant branch: discriminators, w_m, |s|, |c|")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


# ---- training runs: Figure 6(b) and the ceiling ----


def _run_one(args: Tuple[Any, bool, int]) -> Dict[str, Any]:
    """One single-process training run (in a spawned process): its last evaluation, or the
    divergence that stopped it."""
    cfg, reference, threads = args
    torch.set_num_threads(threads)
    import torch.distributed as dist

    from marn_rec.config import REFERENCE
    from marn_rec.quiet import quiet_libraries
    from marn_rec.training.loop import TrainingDiverged, free_port, train

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    if reference:
        cfg = replace(cfg, model=REFERENCE)
    record: Dict[str, Any] = {"model": REFERENCE if reference else cfg.model, "seed": cfg.seed,
                              "lambda0": cfg.model_config().lambda0, "steps": cfg.steps,
                              "out_dir": cfg.out_dir}
    start = time.perf_counter()
    try:
        with quiet_libraries():
            record.update(train(cfg))
        record["diverged"] = None
    except TrainingDiverged as e:
        record["diverged"] = str(e)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    record["seconds"] = time.perf_counter() - start
    return record


def train_runs(runs: Sequence[Tuple[Any, bool]], jobs: int = 1,
               results_path: Optional[str] = None) -> List[Dict[str, Any]]:
    """Trains every ``(TrainConfig, is_reference)`` of ``runs``, ``jobs`` side by side (each a
    spawned single-process group with ``cpu_count // jobs`` threads); returns their records in the
    order given, appending each to ``results_path`` (JSON lines) as it finishes."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    args = [(cfg, ref, threads) for cfg, ref in runs]
    done: Dict[int, Dict[str, Any]] = {}
    with study_pool(jobs) as pool:
        for i, record in pool.imap_unordered(_indexed, list(enumerate(args))):
            done[i] = record
            if results_path:
                with open(results_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
    return [done[i] for i in range(len(args))]


def _indexed(item: Tuple[int, Tuple[Any, bool, int]]) -> Tuple[int, Dict[str, Any]]:
    return item[0], _run_one(item[1])


def lambda_sweep(base: Any, lambdas: Sequence[float] = PAPER_LAMBDAS, jobs: int = 1) -> List[Dict[str, Any]]:
    """Paper Figure 6(b): ``base`` (a ``TrainConfig``, model MARN by default) trained once per
    lambda0, each in ``OUT_DIR/lambda0_<value>``; records in ``OUT_DIR/lambda_sweep.jsonl``."""
    os.makedirs(base.out_dir, exist_ok=True)
    path = os.path.join(base.out_dir, SWEEP_RESULTS)
    if os.path.exists(path):
        os.remove(path)
    runs = [(replace(base, lambda0=float(x), resume="never", progress=False,
                     out_dir=os.path.join(base.out_dir, f"lambda0_{x:g}")), False) for x in lambdas]
    return train_runs(runs, jobs, path)


def plot_lambda_sweep(results: Sequence[Dict[str, Any]], png_path: str, metric: str = "auc") -> None:
    """AUC (``metric``) against lambda0 on a log axis; diverged runs as red crosses at the bottom."""
    plt = _pyplot()
    ok = sorted((r["lambda0"], r[metric]) for r in results if not r.get("diverged") and metric in r)
    bad = sorted(r["lambda0"] for r in results if r.get("diverged"))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if ok:
        ax.plot([x for x, _ in ok], [y for _, y in ok], "o-", label=metric)
    bayes = [r[f"bayes_{metric}"] for r in results if f"bayes_{metric}" in r]
    if bad:
        low = min([y for _, y in ok], default=0.5)
        ax.plot(bad, [low] * len(bad), "x", color="tab:red", ms=10, label="TrainingDiverged")
    ax.set_xscale("log")
    ax.set_xlabel("lambda0")
    ax.set_ylabel(metric)
    # The Bayes-optimal value in the title, not as a line: it would squash the differences.
    ceiling = f"; Bayes-optimal {sum(bayes) / len(bayes):.3f}" if bayes else ""
    ax.set_title(f"{metric} against lambda0 (paper Figure 6(b)){ceiling}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def ceiling_tables(results: Sequence[Dict[str, Any]], ids: str = "BaseModel+IDs") -> str:
    """Markdown: per model (one seed's runs, or means over seeds) AUC, per-user AUC, cold AUC and
    the share of the IDs-to-reference AUC gap; then Table 4 (AUC by observed popularity level) and
    Table 5 (recall@N of cold candidate sets, with RANDOM and Bayes rows) where the runs have them."""
    from marn_rec.models.reference import REFERENCE, gap_share
    from marn_rec.training.ablation.report import level_and_recall_tables

    results = json.loads(json.dumps(list(results)))  # dict keys as in metrics.jsonl: strings
    ok = [r for r in results if not r.get("diverged")]
    models = list(dict.fromkeys(r["model"] for r in ok))

    def mean(model: str, key: str) -> Optional[float]:
        vals = [r[key] for r in ok if r["model"] == model and isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    lines = ["| model | AUC | per-user AUC | cold-item AUC | share of IDs-to-reference gap |",
             "| --- | --- | --- | --- | --- |"]
    ids_auc, ref_auc = mean(ids, "auc"), mean(REFERENCE, "auc")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for m in models:
        share = (gap_share(mean(m, "auc"), ids_auc, ref_auc)
                 if ids_auc is not None and ref_auc is not None else None)
        shown = "n/a" if share is None or math.isnan(share) else f"{share:+.2f}"
        lines.append(f"| {m} | {fmt(mean(m, 'auc'))} | {fmt(mean(m, 'user_auc'))} | "
                     f"{fmt(mean(m, 'cold_auc'))} | {shown} |")
    if ok and "bayes_auc" in ok[0]:
        lines.append(f"| Bayes-optimal (true p) | {fmt(mean(models[0], 'bayes_auc'))} | "
                     f"{fmt(mean(models[0], 'bayes_user_auc'))} | {fmt(mean(models[0], 'bayes_cold_auc'))} | |")
    for r in results:
        if r.get("diverged"):
            lines.append(f"| {r['model']} (seed {r['seed']}) | diverged: {r['diverged'][:80]} | | | |")
    # Tables 4 and 5: the ablation report's, so the two reports read alike.
    extra = level_and_recall_tables(ok) if ok else ""
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = [
    "PAPER_LAMBDAS",
    "adversarial_curves",
    "attention_norms_from_checkpoint",
    "ceiling_tables",
    "items_by_group",
    "items_by_image_quality",
    "lambda_sweep",
    "maf_attention_norms",
    "plot_adversarial_loss",
    "plot_attention_heatmap",
    "plot_lambda_sweep",
    "train_runs",
]
