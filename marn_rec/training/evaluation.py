"""Evaluation of a (sharded) MARNTrain over a fixed set of batches: predictions gathered to rank 0,
the paper's metrics computed there, and the result shared with every rank.

Which metrics appear depends on what the batches carry in ``meta``:
- always: AUC, per-user AUC (eq. 11), the click rate;
- ``candidate_item`` (the synthetic stream's meta; :func:`predict` reads it from the batch's
  ``item_id`` feature when the meta lacks it): AUC by popularity level as the paper measures it
  (Table 4, ``auc_by_popularity_level``): levels from the evaluation samples' own counts of each
  candidate item, equal numbers of items per level (:func:`metrics.observed_popularity_levels`),
  with the levels' item and sample counts (``popularity_levels``);
- ``candidate_cold``: AUC on cold candidates (``cold_auc``) and on the others (``warm_auc``): a
  model that ranks cold candidates as a block above or below the rest loses overall AUC that
  neither of the two shows;
- ``candidate_set`` (-1, or the ID of a user's candidate set of cold items; the synthetic stream's
  ``num_cold_set_batches``): Table 5, recall@N of the clicked cold items among each user's set
  (``cold_recall``, with the RANDOM row ``random_cold_recall`` and the sets' sizes); the samples of
  the sets are left out of every other metric;
- ``candidate_popularity_level`` (the synthetic stream's latent level: equal shares of the Zipf
  mass, cold items included): ``auc_by_latent_popularity_level``;
- ``click_prob`` (the synthetic stream's truth): the Bayes-optimal value of each metric beside it.
"""

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

from marn_rec.batch import MARNBatch
from marn_rec.config import MARNConfig
from marn_rec.training import metrics
from marn_rec.validation import validate_batch

CLICK_PROB = "click_prob"
COLD = "candidate_cold"
CANDIDATE_ITEM = "candidate_item"
CANDIDATE_SET = "candidate_set"
# The synthetic stream's latent level (Zipf mass); Table 4 proper is computed from CANDIDATE_ITEM.
POPULARITY_LEVEL = "candidate_popularity_level"
# Paper Table 5's N (its 1000 needs sets of more than 1000 candidates).
TABLE5_RECALL_AT = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
POPULARITY_LEVELS = 10


def _gather_to_rank0(
    tensors: Dict[str, torch.Tensor], error: Optional[str] = None
) -> Optional[Dict[str, torch.Tensor]]:
    """Concatenation over ranks (in rank order) of each tensor, on rank 0 only (None elsewhere).

    Ranks without any batch send nothing but still take part in the gather. Raises ValueError on
    rank 0 (after the collective, so that no rank waits) when a rank reports ``error`` or the
    ranks' columns differ.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if error:
            raise ValueError(error)
        return tensors
    world, rank = dist.get_world_size(), dist.get_rank()
    parts: Optional[List[Any]] = [None] * world if rank == 0 else None
    dist.gather_object((error, {k: v.cpu() for k, v in tensors.items()}), parts, dst=0)
    if rank != 0:
        return None
    errors = [f"rank {r}: {p[0]}" for r, p in enumerate(parts) if p[0]]  # type: ignore[arg-type]
    if errors:
        raise ValueError("; ".join(errors))
    present = [p[1] for p in parts if p[1]]  # type: ignore[union-attr]
    keys = sorted(present[0]) if present else sorted(tensors)
    if any(sorted(p) != keys for p in present):
        raise ValueError(f"evaluation: the ranks' batches carry different columns "
                         f"{[sorted(p) for p in present]}")
    return {k: torch.cat([p[k] for p in present]) for k in keys} if present else {}


def candidate_items(batch: MARNBatch, config: MARNConfig) -> Optional[torch.Tensor]:
    """[B] candidate item of every sample: ``meta["candidate_item"]`` if the batch has it, else the
    value of the item's first ID feature (``item_id``) at the candidate's row; None when that
    feature is multi-valued.

    On prepared data the ``item_id`` feature maps items counted fewer than ``min_count`` times in
    training (held-out cold items among them) to row 0, so they would count as one item: a prepared
    batch should carry ``meta["candidate_item"]`` (its ``candidate`` column, the item row).
    """
    if CANDIDATE_ITEM in batch.meta:
        return batch.meta[CANDIDATE_ITEM]
    feature = config.tower.item_id_features()[0]
    if feature.multi_valued or feature.name not in batch.item_sparse.keys():
        return None
    values = batch.item_sparse[feature.name].values()
    if values.numel() != batch.num_unique_items:
        return None
    return values[batch.candidate_index]


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[MARNBatch],
    device: torch.device,
    config: MARNConfig,
) -> Optional[Dict[str, torch.Tensor]]:
    """Scores and the evaluation facts (label, user, meta) of every sample of every rank, on rank 0.

    ``model`` is a (sharded) :class:`~marn_rec.models.marn.MARNTrain` in eval mode. Every batch
    must carry the same ``meta`` keys (ValueError otherwise: a key missing from some batches would
    misalign the samples).
    """
    cols: Dict[str, List[torch.Tensor]] = {}
    keys: Optional[List[str]] = None
    error: Optional[str] = None
    for batch in batches:
        if keys is None:
            keys = sorted(batch.meta)
        elif sorted(batch.meta) != keys:
            error = (f"evaluation: batches carry different meta keys ({keys} and "
                     f"{sorted(batch.meta)})")
            cols = {}
            break
        batch = validate_batch(batch, config)
        items = candidate_items(batch, config)
        batch = batch.to(device)
        _, (_, logits, labels) = model(batch)
        got = {"score": torch.sigmoid(logits), "label": labels, "user": batch.user_ids, **batch.meta}
        if items is not None and CANDIDATE_ITEM not in got:
            got[CANDIDATE_ITEM] = items
        for k, v in got.items():
            cols.setdefault(k, []).append(v.detach().cpu())
    return _gather_to_rank0({k: torch.cat(v) for k, v in cols.items()}, error)


def evaluation_metrics(
    e: Dict[str, torch.Tensor],
    recall_at: Sequence[int] = TABLE5_RECALL_AT,
    levels: int = POPULARITY_LEVELS,
) -> Dict[str, Any]:
    """The paper's metrics of ``e`` (see the module docstring for which ones appear).

    ``recall_at``: the N of Table 5's recall@N over the candidate sets.
    """
    if not e or e["score"].numel() == 0:
        raise ValueError("evaluation: no samples to evaluate (is the eval split empty?)")
    in_set = e[CANDIDATE_SET] >= 0 if CANDIDATE_SET in e else None
    out: Dict[str, Any] = {}
    ordinary = e if in_set is None else {k: v[~in_set] for k, v in e.items()}
    if ordinary["score"].numel():
        out.update(_sample_metrics(ordinary, levels))
    if in_set is not None and bool(in_set.any()):
        out.update(_candidate_set_metrics({k: v[in_set] for k, v in e.items()}, recall_at))
    if not out:
        raise ValueError("evaluation: no samples to evaluate")
    return out


def _with_bayes(
    out: Dict[str, Any], e: Dict[str, torch.Tensor], name: str, fn: Callable[[torch.Tensor], Any]
) -> None:
    """``out[name]``: ``fn`` of the model's scores; ``out["bayes_" + name]``: of the true
    probability, where ``e`` has it."""
    out[name] = fn(e["score"])
    if CLICK_PROB in e:
        out[f"bayes_{name}"] = fn(e[CLICK_PROB])


def _sample_metrics(e: Dict[str, torch.Tensor], levels: int) -> Dict[str, Any]:
    """AUC, per-user AUC, Table 4 and cold-candidate AUC of the ordinary evaluation samples."""
    label, user = e["label"], e["user"]
    out: Dict[str, Any] = {"samples": int(label.numel()), "click_rate": float(label.mean())}
    _with_bayes(out, e, "auc", lambda s: metrics.auc(s, label))
    _with_bayes(out, e, "user_auc", lambda s: metrics.user_auc(s, label, user))
    if CANDIDATE_ITEM in e:
        items = e[CANDIDATE_ITEM]
        level = metrics.observed_popularity_levels(items, levels)
        _with_bayes(out, e, "auc_by_popularity_level",
                    lambda s: metrics.auc_by_level(s, label, level, levels))
        out["popularity_levels"] = metrics.popularity_level_summary(items, level)
    if POPULARITY_LEVEL in e:
        latent = e[POPULARITY_LEVEL]
        _with_bayes(out, e, "auc_by_latent_popularity_level",
                    lambda s: metrics.auc_by_level(s, label, latent, levels))
    if COLD in e and bool(e[COLD].bool().any()):
        cold = e[COLD].bool()
        out["cold_samples"] = int(cold.sum())
        _with_bayes(out, e, "cold_auc", lambda s: metrics.auc(s[cold], label[cold]))
        if not bool(cold.all()):
            _with_bayes(out, e, "warm_auc", lambda s: metrics.auc(s[~cold], label[~cold]))
    return out


def _candidate_set_metrics(e: Dict[str, torch.Tensor], recall_at: Sequence[int]) -> Dict[str, Any]:
    """Table 5: recall@N of the clicked items of each candidate set, ranked by score."""
    label, sets = e["label"], e[CANDIDATE_SET]
    _, sizes = torch.unique(sets, return_counts=True)
    out: Dict[str, Any] = {
        "cold_sets": int(sizes.numel()),
        "cold_set_size_min": int(sizes.min()),
        "cold_set_size_max": int(sizes.max()),
        "cold_set_click_rate": float(label.mean()),
    }
    _with_bayes(out, e, "cold_recall", lambda s: metrics.recall_at_n(s, label, sets, recall_at))
    out["random_cold_recall"] = metrics.random_recall_at_n(label, sets, recall_at)
    return out


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[MARNBatch],
    device: torch.device,
    config: MARNConfig,
    recall_at: Sequence[int] = TABLE5_RECALL_AT,
) -> Dict[str, Any]:
    """:func:`predict` then :func:`evaluation_metrics` on rank 0; every rank returns the metrics."""
    was_training = model.training
    model.eval()
    result: List[Any] = [None]
    gathered: Optional[Dict[str, torch.Tensor]] = None
    try:
        gathered = predict(model, batches, device, config)
    except ValueError as e:  # raised after the gather, on rank 0 (or in a group of one)
        result[0] = e
    finally:
        model.train(was_training)
    if gathered is not None:
        try:
            result[0] = evaluation_metrics(gathered, recall_at)
        except ValueError as e:  # shared, so that every rank raises it, not only rank 0
            result[0] = e
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]
