"""Helpers shared by the serving tests and benchmark: the full model's logits for a scoring request
(the parity reference), and a training-format checkpoint written from an in-memory model."""

import os
import warnings
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from marn_rec.batch import ItemFeatures, MARNBatch, build_batch


def request_batch(
    item_features: Callable[[torch.Tensor], ItemFeatures],
    history_items: torch.Tensor,
    behavior_types: torch.Tensor,
    time_buckets: torch.Tensor,
    candidate_items: torch.Tensor,
    history_lengths: Optional[torch.Tensor] = None,
    candidate_counts: Optional[torch.Tensor] = None,
) -> MARNBatch:
    """The training model's batch for a scoring request: one sample per candidate, each carrying
    its user's whole history (arguments as :meth:`marn_rec.serving.scorer.MARNScorer.forward`)."""
    if history_lengths is None or candidate_counts is None:
        history_lengths = torch.tensor([history_items.numel()])
        candidate_counts = torch.tensor([candidate_items.numel()])
    starts = torch.cumsum(history_lengths, 0) - history_lengths
    user = torch.repeat_interleave(torch.arange(history_lengths.numel()), candidate_counts)
    pieces = [torch.arange(int(starts[u]), int(starts[u] + history_lengths[u])) for u in user.tolist()]
    index = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
    c = candidate_items.numel()
    return build_batch(
        candidate_items=candidate_items,
        history_items=history_items[index],
        history_lengths=history_lengths[user],
        behavior_types=behavior_types[index],
        behavior_time_buckets=time_buckets[index],
        labels=torch.zeros(c),
        item_features=item_features,
    )


@torch.no_grad()
def full_model_logits(model: nn.Module, item_features: Callable[[torch.Tensor], ItemFeatures], **request: Any) -> torch.Tensor:
    """[C] logits of the whole MARN (eval mode) for a scoring request (keyword arguments of
    :func:`request_batch`)."""
    batch = request_batch(item_features, **request)
    return model.eval()(**batch.model_inputs()).logits


def write_checkpoint(model: nn.Module, out_dir: str, step: int = 1, data: Optional[Any] = None,
                     extra_meta: Optional[Dict[str, Any]] = None) -> str:
    """Writes ``MARNTrain`` ``model`` (unsharded or DMP; collective under a process group) as the
    training loop does, into ``out_dir/checkpoints/step_.../``; returns that directory.

    Args:
        data: the synthetic data configuration recorded under ``"data"`` (None: none).
    """
    from torch.utils.data import Dataset
    from torchdata.stateful_dataloader import StatefulDataLoader

    from marn_rec.training.checkpoint import save_checkpoint

    class _Positions(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor(i)

    inner = getattr(model, "module", model)
    config = inner.model.config
    meta: Dict[str, Any] = {"model": asdict(config), "train": {}, "data": asdict(data) if data is not None else None}
    meta.update(extra_meta or {})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    with warnings.catch_warnings():
        # torchdata's own deprecated call; DCP's note that it saves without a process group.
        warnings.filterwarnings("ignore", message=r".*set_vital.*")
        warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
        loader = StatefulDataLoader(_Positions(), batch_size=None)
        return save_checkpoint(os.path.join(out_dir, "checkpoints"), step, model, optimizer, loader, meta)


def batch_request(batch: MARNBatch) -> Dict[str, torch.Tensor]:
    """A training / evaluation batch as a scorer request: every sample a user with one candidate
    (item IDs read from the batch's ``item_id`` feature)."""
    from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, ITEM_ID

    ids = batch.item_sparse.to_dict()[ITEM_ID].values()
    props = batch.history_property.to_dict()
    n = batch.history_index.numel()
    return dict(
        history_items=ids[batch.history_index],
        behavior_types=props[BEHAVIOR_TYPE].values()[:n],
        time_buckets=props[BEHAVIOR_TIME].values()[:n],
        candidate_items=ids[batch.candidate_index],
        history_lengths=batch.history_lengths,
        candidate_counts=torch.ones_like(batch.history_lengths),
    )
