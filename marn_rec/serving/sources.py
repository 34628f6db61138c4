"""Item feature sources: where extraction reads the catalogue's items from.

An :class:`ItemSource` is a callable ``ids -> ItemFeatures`` and the catalogue's item IDs (by
default ``0 .. count - 1``), so any catalogue plugs into extraction:

* the synthetic Taobao catalogue (:func:`synthetic_source`), rebuilt from a training checkpoint's
  ``meta.json`` ``"data"`` entry by :func:`source_from_checkpoint_meta` (which opens the prepared
  directory instead when the run trained on one, ``train.data_dir``);
* a prepared data set's item table (:func:`prepared_source`, item row r = item ID r, row 0 the
  out-of-vocabulary item, which histories may hold and is therefore extracted too);
* anything else: ``ItemSource(features=my_lookup, count=n)``.
"""

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Optional

import torch

from marn_rec.batch import ItemFeatures


@dataclass
class ItemSource:
    """A catalogue: the features of any of its items, and its item IDs.

    Args:
        features: ``ids`` (1-d int64) -> :class:`~marn_rec.batch.ItemFeatures` of those items, in
            that order (may raise for items it cannot describe: extraction then reports them).
        count: number of items (used when ``ids`` is None).
        ids: [count] distinct int64 item IDs; None: ``arange(count)``.
        description: JSON-serialisable facts recorded in the store's manifest.

    Example::

        source = ItemSource(features=catalog.features, count=1000)
        source.ids[:3]       # tensor([0, 1, 2])
    """

    features: Callable[[torch.Tensor], ItemFeatures]
    count: Optional[int] = None
    ids: Optional[torch.Tensor] = None
    description: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ids is None:
            if self.count is None or self.count < 0:
                raise ValueError(f"ItemSource: give ids or a count >= 0, got count {self.count}")
            self.ids = torch.arange(self.count, dtype=torch.int64)
        else:
            if not isinstance(self.ids, torch.Tensor) or self.ids.dtype not in (torch.int32, torch.int64):
                raise ValueError("ItemSource: ids must be an int32 or int64 tensor")
            self.ids = self.ids.long().flatten()
            if self.count is not None and self.count != self.ids.numel():
                raise ValueError(f"ItemSource: count {self.count} but {self.ids.numel()} ids")
            if torch.unique(self.ids).numel() != self.ids.numel():
                raise ValueError("ItemSource: item IDs must be distinct")
        self.count = self.ids.numel()

    def __len__(self) -> int:
        return int(self.count or 0)


def synthetic_source(data: Any) -> ItemSource:
    """Every item of a synthetic catalogue (a ``SyntheticTaobao``, its ``ItemCatalog`` or a
    ``SyntheticTaobaoConfig``), in popularity order (rank 0 first)."""
    from marn_rec.data import ItemCatalog, SyntheticTaobao, SyntheticTaobaoConfig

    if isinstance(data, SyntheticTaobaoConfig):
        catalog = ItemCatalog(data)
    elif isinstance(data, SyntheticTaobao):
        catalog = data.catalog
    elif isinstance(data, ItemCatalog):
        catalog = data
    else:
        raise TypeError(f"expected SyntheticTaobao, ItemCatalog or SyntheticTaobaoConfig, got {type(data).__name__}")
    ids = catalog.ids_of_ranks(torch.arange(catalog.num_catalog_items))
    return ItemSource(
        features=catalog.features,
        ids=ids,
        description={"kind": "synthetic", "seed": catalog.config.seed, "num_items": int(ids.numel())},
    )


def synthetic_config_from_meta(data: Dict[str, Any]) -> Any:
    """The ``SyntheticTaobaoConfig`` of a checkpoint's ``meta.json`` ``"data"`` entry (lists back to
    tuples)."""
    from marn_rec.data import SyntheticTaobaoConfig

    known = {f.name: f for f in fields(SyntheticTaobaoConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"not a synthetic data configuration (unknown fields {unknown[:5]})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return SyntheticTaobaoConfig(**values)


def source_from_checkpoint_meta(meta: Dict[str, Any]) -> ItemSource:
    """The catalogue a training run used, from its checkpoint's ``meta.json``: the prepared
    directory of ``train.data_dir`` when the run trained on real data, else the synthetic
    catalogue of ``data``.

    Raises:
        ValueError: neither is recorded (name the item source explicitly).
    """
    data_dir = (meta.get("train") or {}).get("data_dir")
    if data_dir:
        return prepared_source(data_dir)
    data = meta.get("data")
    if not isinstance(data, dict):
        raise ValueError("the checkpoint's meta.json has no 'data' entry: name the item source explicitly")
    return synthetic_source(synthetic_config_from_meta(data))


def prepared_source(data: Any) -> ItemSource:
    """Every item row of a prepared data set (a directory or an open ``PreparedDataset``): item
    row r has ID r; row 0 is the out-of-vocabulary item."""
    from marn_rec.data.prepared import PreparedDataset

    dataset = data if isinstance(data, PreparedDataset) else PreparedDataset(str(data))
    return ItemSource(
        features=dataset.features,
        count=int(dataset.num_items),
        description={"kind": "prepared", "path": str(dataset.path), "num_items": int(dataset.num_items)},
    )
