"""Synthetic Taobao-like data: a generator that knows the true click probability, and its loader."""

from marn_rec.data.loader import SyntheticBatchDataset, make_loader
from marn_rec.data.synthetic import (
    EVAL,
    MODALITY_GROUPS,
    NUM_POPULARITY_LEVELS,
    SPLITS,
    TRAIN,
    ItemCatalog,
    ItemTruth,
    Slots,
    SyntheticTaobao,
    SyntheticTaobaoConfig,
    UserInterests,
    shard_batch_indices,
)

__all__ = [
    "EVAL",
    "MODALITY_GROUPS",
    "NUM_POPULARITY_LEVELS",
    "SPLITS",
    "TRAIN",
    "ItemCatalog",
    "ItemTruth",
    "Slots",
    "SyntheticBatchDataset",
    "SyntheticTaobao",
    "SyntheticTaobaoConfig",
    "UserInterests",
    "make_loader",
    "shard_batch_indices",
]
