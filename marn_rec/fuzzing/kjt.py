"""Helpers over the KeyedJaggedTensors of a batch: the features the model reads, a KJT's parts and
back, rebuilt KJTs, and batch conditions the KJT kinds draw with."""

from dataclasses import replace
from typing import Any, Callable, Dict, List, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.config import MARNConfig
from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, TITLE_WORDS
from marn_rec.validation import sparse_feature_rows

KJT_FIELDS = ("item_sparse", "item_title", "history_property")


def _rows(config: MARNConfig, field_name: str) -> Dict[str, int]:
    """feature -> table rows of the features the model reads from KJT field ``field_name``."""
    if field_name == "item_sparse":
        return sparse_feature_rows(config.tower)
    if field_name == "item_title":
        return {TITLE_WORDS: config.tower.title_vocab_size}
    c = config.behavior
    return {BEHAVIOR_TYPE: c.num_behavior_types, BEHAVIOR_TIME: c.num_time_buckets}


def kjt_parts(kjt: KeyedJaggedTensor) -> Tuple[List[str], List[torch.Tensor], List[torch.Tensor]]:
    """(keys, values per key, lengths per key [stride]) of a valid KJT, computed here."""
    keys = list(kjt.keys())
    lengths = kjt.lengths().view(len(keys), -1)
    values = list(torch.split(kjt.values(), lengths.sum(dim=1).tolist()))
    return keys, values, [lengths[i] for i in range(len(keys))]


def kjt_from_parts(
    keys: List[str], values: List[torch.Tensor], lengths: List[torch.Tensor], **kwargs: Any
) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths), **kwargs
    )


def _rebuilt(kjt: KeyedJaggedTensor, **kwargs: Any) -> KeyedJaggedTensor:
    """A new KJT of the same keys, values and lengths (no caches), with ``kwargs`` replacing or
    adding constructor arguments."""
    args: Dict[str, Any] = dict(keys=list(kjt.keys()), values=kjt.values(), lengths=kjt.lengths())
    args.update(kwargs)
    return KeyedJaggedTensor(**args)


def _empty_kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor.empty(values_dtype=torch.int64, lengths_dtype=torch.int64)


def _with(batch: MARNBatch, field_name: str, value: Any) -> MARNBatch:
    return replace(batch, **{field_name: value})


def _has_values(field_name: str, config: MARNConfig) -> Callable[[MARNBatch], bool]:
    rows = _rows(config, field_name)

    def ok(b: MARNBatch) -> bool:
        keys, values, _ = kjt_parts(getattr(b, field_name))
        return any(values[i].numel() for i, k in enumerate(keys) if k in rows)

    return ok


def _min_numel(field_name: str, part: str, n: int) -> Callable[[MARNBatch], bool]:
    def ok(b: MARNBatch) -> bool:
        kjt = getattr(b, field_name)
        t = kjt.values() if part == "values" else kjt.lengths()
        return t.numel() >= n

    return ok


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in a view with stride 2 (not contiguous)."""
    out = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    assert torch.equal(out, t) and (t.numel() < 2 or not out.is_contiguous())
    return out
