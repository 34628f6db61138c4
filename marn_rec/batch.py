"""The batch MARN consumes: item features once per unique item, slots as indices into them.

A sample is a candidate and T behaviours, each an item with every modality. Carrying the item
features once per slot would repeat a 4096-d image B x (T + 1) times while popular items repeat
across the batch, so the batch holds the U unique items of the batch (candidates and history
together) and the slots index into them. ``build_batch(..., dedup=False)`` makes one row per slot,
the layout a per-slot model would see; both give the same predictions.

History slots are jagged: ``history_index`` holds the N = sum(history_lengths) slots of all samples
back to back, as a ``JaggedTensor``'s values would.
"""

from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, TITLE_WORDS


@dataclass
class ItemFeatures:
    """Features of a set of items, one row per item.

    Args:
        sparse: feature name -> [U] int64 ID (ID features and statistic buckets).
        title_values: concatenated title word IDs of the U items.
        title_lengths: [U] number of title words of each item.
        image: [U, image_dim] float32 image vectors (VGG16 fc7 at paper size).
    """

    sparse: Dict[str, torch.Tensor]
    title_values: torch.Tensor
    title_lengths: torch.Tensor
    image: torch.Tensor


@dataclass
class MARNBatch(Pipelineable):
    """One training or evaluation batch of B samples over U unique items.

    Args:
        item_sparse: ID and statistic features of the unique items, one value each (stride U).
        item_title: title words of the unique items, a sequence each (stride U).
        item_image: [U, image_dim] image vectors.
        candidate_index: [B] row of each sample's candidate among the unique items.
        history_index: [N] rows of the behaviour items, sample after sample.
        history_lengths: [B] behaviours per sample (0 is valid: a user without history).
        history_property: behavior_type and behavior_time bucket per behaviour (stride N).
        labels: [B] click (1.0) or not (0.0).
        user_ids: [B] user of each sample, for per-user AUC (paper eq. 11).
        meta: extra per-sample tensors the model does not read (e.g. the true click probability).
    """

    item_sparse: KeyedJaggedTensor
    item_title: KeyedJaggedTensor
    item_image: torch.Tensor
    candidate_index: torch.Tensor
    history_index: torch.Tensor
    history_lengths: torch.Tensor
    history_property: KeyedJaggedTensor
    labels: torch.Tensor
    user_ids: torch.Tensor
    meta: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.candidate_index.numel()

    @property
    def num_unique_items(self) -> int:
        return self.item_image.shape[0]

    def model_inputs(self) -> Dict[str, object]:
        """Keyword arguments of :meth:`marn_rec.models.marn.MARN.forward`."""
        return dict(
            item_sparse=self.item_sparse,
            item_title=self.item_title,
            item_image=self.item_image,
            candidate_index=self.candidate_index,
            history_index=self.history_index,
            history_lengths=self.history_lengths,
            history_property=self.history_property,
        )

    def _map(self, fn: Callable[[object], object]) -> "MARNBatch":
        """A batch with ``fn`` applied to every tensor and KJT field (and every ``meta`` value)."""
        changes = {
            f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "meta"
        }
        return MARNBatch(**changes, meta={k: fn(v) for k, v in self.meta.items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> "MARNBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            if f.name != "meta":
                getattr(self, f.name).record_stream(stream)
        for t in self.meta.values():
            t.record_stream(stream)

    def pin_memory(self) -> "MARNBatch":
        return self._map(lambda t: t.pin_memory())


def single_value_kjt(features: Dict[str, torch.Tensor]) -> KeyedJaggedTensor:
    """A KJT with one value per row for every feature (all tensors of the same length)."""
    keys = list(features)
    values = torch.cat([features[k].long() for k in keys])
    n = features[keys[0]].numel() if keys else 0
    return KeyedJaggedTensor(
        keys=keys, values=values, lengths=torch.ones(len(keys) * n, dtype=torch.int64)
    )


def build_batch(
    candidate_items: torch.Tensor,
    history_items: torch.Tensor,
    history_lengths: torch.Tensor,
    behavior_types: torch.Tensor,
    behavior_time_buckets: torch.Tensor,
    labels: torch.Tensor,
    item_features: Callable[[torch.Tensor], ItemFeatures],
    user_ids: Optional[torch.Tensor] = None,
    meta: Optional[Dict[str, torch.Tensor]] = None,
    dedup: bool = True,
) -> MARNBatch:
    """Assembles a :class:`MARNBatch` from item IDs of the slots.

    Args:
        candidate_items: [B] item ID of each candidate.
        history_items: [N] item IDs of the behaviours, sample after sample.
        history_lengths: [B] behaviours per sample.
        behavior_types: [N] click / cart / purchase (``marn_rec.features.CLICK`` ...).
        behavior_time_buckets: [N] bucketised time since each behaviour.
        labels: [B] clicks.
        item_features: looks up :class:`ItemFeatures` for a 1-d tensor of item IDs.
        dedup: one row per unique item (True) or one row per slot (False).

    Example::

        batch = build_batch(cands, hist, lengths, types, times, labels, catalog.features)
        out = model(**batch.model_inputs())
    """
    all_items = torch.cat([candidate_items.long(), history_items.long()])
    if dedup:
        unique, inverse = torch.unique(all_items, return_inverse=True)
    else:
        unique, inverse = all_items, torch.arange(all_items.numel())
    b = candidate_items.numel()
    feats = item_features(unique)
    title = KeyedJaggedTensor(
        keys=[TITLE_WORDS],
        values=feats.title_values.long(),
        lengths=feats.title_lengths.long(),
    )
    return MARNBatch(
        item_sparse=single_value_kjt(feats.sparse),
        item_title=title,
        item_image=feats.image,
        candidate_index=inverse[:b],
        history_index=inverse[b:],
        history_lengths=history_lengths.long(),
        history_property=single_value_kjt(
            {BEHAVIOR_TYPE: behavior_types, BEHAVIOR_TIME: behavior_time_buckets}
        ),
        labels=labels.float(),
        user_ids=user_ids.long() if user_ids is not None else torch.zeros(b, dtype=torch.long),
        meta=dict(meta or {}),
    )
