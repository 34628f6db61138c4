"""Data for MARN: the synthetic Taobao-like stream (``synthetic/``: a generator that knows the true
click probability, and its resumable loader) and the VGG16 image-feature extractor
(``image_features``)."""

from marn_rec.data.synthetic import (
    EVAL,
    MODALITY_GROUPS,
    NUM_POPULARITY_LEVELS,
    SPLITS,
    TRAIN,
    ItemCatalog,
    ItemTruth,
    Slots,
    SyntheticBatchDataset,
    SyntheticTaobao,
    SyntheticTaobaoConfig,
    UserInterests,
    make_loader,
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
