"""Evaluation of a (sharded) MARNTrain over a fixed set of batches: predictions gathered to rank 0,
the paper's metrics computed there, and the result shared with every rank.

Which metrics appear depends on what the batches carry in ``meta``:
- always: AUC, per-user AUC (eq. 11), the click rate;
- ``candidate_cold``: AUC and recall@N on cold candidates (Table 5);
- ``candidate_popularity_level``: AUC by popularity level (Table 4);
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
POPULARITY_LEVEL = "candidate_popularity_level"


def _gather_to_rank0(tensors: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    """Concatenation over ranks (in rank order) of each tensor, on rank 0 only (None elsewhere).

    Ranks without any batch send nothing but still take part in the gather.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world, rank = dist.get_world_size(), dist.get_rank()
    parts: Optional[List[Optional[Dict[str, torch.Tensor]]]] = [None] * world if rank == 0 else None
    dist.gather_object({k: v.cpu() for k, v in tensors.items()}, parts, dst=0)
    if rank != 0:
        return None
    present = [p for p in parts if p]  # type: ignore[union-attr]
    keys = present[0].keys() if present else tensors.keys()
    return {k: torch.cat([p[k] for p in present]) for k in keys} if present else {}


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[MARNBatch],
    device: torch.device,
    config: MARNConfig,
) -> Optional[Dict[str, torch.Tensor]]:
    """Scores and the evaluation facts (label, user, meta) of every sample of every rank, on rank 0.

    ``model`` is a (sharded) :class:`~marn_rec.models.marn.MARNTrain` in eval mode.
    """
    cols: Dict[str, List[torch.Tensor]] = {}
    for batch in batches:
        batch = validate_batch(batch, config).to(device)
        _, (_, logits, labels) = model(batch)
        got = {"score": torch.sigmoid(logits), "label": labels, "user": batch.user_ids, **batch.meta}
        for k, v in got.items():
            cols.setdefault(k, []).append(v.detach().cpu())
    return _gather_to_rank0({k: torch.cat(v) for k, v in cols.items()})


def evaluation_metrics(e: Dict[str, torch.Tensor], recall_at: Sequence[int]) -> Dict[str, Any]:
    """The paper's metrics of ``e`` (see the module docstring for which ones appear)."""
    if not e or e["score"].numel() == 0:
        raise ValueError("evaluation: no samples to evaluate (is the eval split empty?)")
    score, label, user = e["score"], e["label"], e["user"]
    truth = e.get(CLICK_PROB)
    out: Dict[str, Any] = {"samples": int(label.numel()), "click_rate": float(label.mean())}

    def with_bayes(name: str, fn: Callable[[torch.Tensor], Any]) -> None:
        """``name``: ``fn`` of the model's scores; ``bayes_<name>``: of the true probability."""
        out[name] = fn(score)
        if truth is not None:
            out[f"bayes_{name}"] = fn(truth)

    with_bayes("auc", lambda s: metrics.auc(s, label))
    with_bayes("user_auc", lambda s: metrics.user_auc(s, label, user))
    if POPULARITY_LEVEL in e:
        level = e[POPULARITY_LEVEL]
        with_bayes("auc_by_popularity_level", lambda s: metrics.auc_by_level(s, label, level))
    if COLD in e and bool(e[COLD].bool().any()):
        cold = e[COLD].bool()
        out["cold_samples"] = int(cold.sum())
        with_bayes("cold_auc", lambda s: metrics.auc(s[cold], label[cold]))
        with_bayes(
            "cold_recall", lambda s: metrics.recall_at_n(s, label, user, recall_at, mask=cold)
        )
    return out


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[MARNBatch],
    device: torch.device,
    config: MARNConfig,
    recall_at: Sequence[int] = (1, 3, 5),
) -> Dict[str, Any]:
    """:func:`predict` then :func:`evaluation_metrics` on rank 0; every rank returns the metrics."""
    was_training = model.training
    model.eval()
    try:
        gathered = predict(model, batches, device, config)
    finally:
        model.train(was_training)
    result: List[Any] = [None]
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
