"""The batch MARN consumes: item features once per unique item, slots as indices into them.

A sample is a candidate and T behaviours, each an item with every modality. Carrying the item
features once per slot would repeat a 4096-d image B x (T + 1) times while popular items repeat
across the batch, so the batch holds the U unique items of the batch (candidates and history
together) and the slots index into them. ``build_batch(..., dedup=False)`` makes one row per slot,
the layout a per-slot model would see; both give the same predictions.

History slots are jagged: ``history_index`` holds the N = sum(history_lengths) slots of all samples
back to back, as a ``JaggedTensor``'s values would. ``history_property`` has one row per behaviour,
and a single placeholder row when the batch has no behaviour at all: a KJT of stride 0 cannot go
through a sharded lookup, whose all-to-all every rank must join, and the model must not change the
KJT it is given, or TorchRec's train pipelines could not start its lookup ahead of the forward.
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
        sparse: feature name -> int64 IDs (ID features and statistic buckets): [U], or the
            concatenated values of a multi-valued feature named in ``sparse_lengths``.
        title_values: concatenated title word IDs of the U items (None: no title modality).
        title_lengths: [U] number of title words of each item.
        image: [U, image_dim] float32 image vectors (VGG16 fc7 at paper size), or None.
        sparse_lengths: [U] values per item of each multi-valued feature.
    """

    sparse: Dict[str, torch.Tensor]
    title_values: Optional[torch.Tensor] = None
    title_lengths: Optional[torch.Tensor] = None
    image: Optional[torch.Tensor] = None
    sparse_lengths: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # IDs and lengths are converted with .long(): a float (3.7) or bool would become another
        # ID without a word, so only integer tensors are accepted. Ranges are checked by
        # marn_rec.validation against the tables.
        if not isinstance(self.sparse, dict):
            raise ValueError(
                f"sparse: expected a dict of tensors, got {type(self.sparse).__name__}"
            )
        if not isinstance(self.sparse_lengths, dict):
            raise ValueError(
                "sparse_lengths: expected a dict of tensors, got "
                f"{type(self.sparse_lengths).__name__}"
            )
        for name, t in self.sparse.items():
            _check_integer_1d(f"sparse[{name!r}]", t)
        for name, t in self.sparse_lengths.items():
            if name not in self.sparse:
                raise ValueError(f"sparse_lengths[{name!r}]: no such feature in sparse")
            _check_integer_1d(f"sparse_lengths[{name!r}]", t)
        if (self.title_values is None) != (self.title_lengths is None):
            raise ValueError("title_values, title_lengths: give both or neither")
        if self.title_values is not None:
            _check_integer_1d("title_values", self.title_values)
            _check_integer_1d("title_lengths", self.title_lengths)
        if self.image is not None and not isinstance(self.image, torch.Tensor):
            raise ValueError(f"image: expected a torch.Tensor, got {type(self.image).__name__}")

    def sparse_kjt(self) -> KeyedJaggedTensor:
        """``item_sparse``: one value per item, or ``sparse_lengths[name]`` values for the
        multi-valued features named there."""
        keys = list(self.sparse)
        if not keys:
            return KeyedJaggedTensor.empty(values_dtype=torch.int64, lengths_dtype=torch.int64)
        first = keys[0]
        n = (self.sparse_lengths[first] if first in self.sparse_lengths else self.sparse[first]).numel()
        lengths = [
            self.sparse_lengths[k].long() if k in self.sparse_lengths else torch.ones(n, dtype=torch.int64)
            for k in keys
        ]
        values = torch.cat([self.sparse[k].long() for k in keys])
        return KeyedJaggedTensor(keys=keys, values=values, lengths=torch.cat(lengths))


@dataclass
class MARNBatch(Pipelineable):
    """One training or evaluation batch of B samples over U unique items.

    Args:
        item_sparse: ID and statistic features of the unique items (stride U): one value each,
            any number for multi-valued ID features.
        item_title: title words of the unique items, a sequence each (stride U); None without
            the title modality.
        item_image: [U, image_dim] float32 image vectors; None without the image modality.
        candidate_index: [B] row of each sample's candidate among the unique items.
        history_index: [N] rows of the behaviour items, sample after sample.
        history_lengths: [B] behaviours per sample (0 is valid: a user without history).
        history_property: behavior_type and behavior_time bucket per behaviour (stride N; 1 with a
            placeholder behaviour when N = 0).
        labels: [B] click (1.0) or not (0.0).
        user_ids: [B] user of each sample, for per-user AUC (paper eq. 11).
        meta: extra per-sample tensors the model does not read (e.g. the true click probability).
    """

    item_sparse: KeyedJaggedTensor
    item_title: Optional[KeyedJaggedTensor]
    item_image: Optional[torch.Tensor]
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
        if self.item_image is not None:
            return self.item_image.shape[0]
        if self.item_sparse.keys():
            return self.item_sparse.stride()
        return self.item_title.stride() if self.item_title is not None else 0

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
            f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
            for f in fields(self)
            if f.name != "meta"
        }
        return MARNBatch(**changes, meta={k: fn(v) for k, v in self.meta.items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> "MARNBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            if f.name != "meta" and getattr(self, f.name) is not None:
                getattr(self, f.name).record_stream(stream)
        for t in self.meta.values():
            t.record_stream(stream)

    def pin_memory(self) -> "MARNBatch":
        return self._map(lambda t: t.pin_memory())


def single_value_kjt(features: Dict[str, torch.Tensor]) -> KeyedJaggedTensor:
    """A KJT with one value per row for every feature (all tensors of the same length)."""
    return ItemFeatures(sparse=features).sparse_kjt()


def _check_integer_1d(name: str, t: object) -> None:
    """``t`` is a 1-d tensor of an integer dtype (not bool)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer values, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-d tensor, got shape {list(t.shape)}")


def _check_ids(name: str, t: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
    # A float ID (3.7) would be truncated to another item without a word.
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{name}: expected an int32 or int64 tensor, got {getattr(t, 'dtype', type(t).__name__)}"
        )
    if t.device.type == "meta" or t.layout != torch.strided or t.is_nested:
        raise ValueError(f"{name}: expected a dense tensor holding values")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-d tensor, got shape {list(t.shape)}")
    if size is not None and t.numel() != size:
        raise ValueError(f"{name}: expected {size} entries, got {t.numel()}")
    return t.long()


def _check_non_negative(name: str, t: torch.Tensor, what: str) -> None:
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: negative {what} {int(t.min())}")


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

    Raises:
        ValueError: on inputs that would otherwise be converted into other valid-looking values:
            IDs, lengths, behaviour properties or user IDs that are not 1-d int32 / int64 tensors
            (a float ID would be truncated), negative item IDs (they would index the catalogue from
            its end), history lengths that do not add up to the history items, behaviour types or
            times not one per history item, labels not a real [B] tensor, ``meta`` not a dict,
            ``item_features`` not returning :class:`ItemFeatures`. Ranges against the tables are
            checked by :func:`marn_rec.validation.validate_batch`.

    Example::

        batch = build_batch(cands, hist, lengths, types, times, labels, catalog.features)
        out = model(**batch.model_inputs())
    """
    candidate_items = _check_ids("candidate_items", candidate_items)
    b = candidate_items.numel()
    history_items = _check_ids("history_items", history_items)
    n = history_items.numel()
    history_lengths = _check_ids("history_lengths", history_lengths, b)
    behavior_types = _check_ids("behavior_types", behavior_types, n)
    behavior_time_buckets = _check_ids("behavior_time_buckets", behavior_time_buckets, n)
    # Item features are looked up by ID: a negative one would index from the end of a table.
    _check_non_negative("candidate_items", candidate_items, "item id")
    _check_non_negative("history_items", history_items, "item id")
    _check_non_negative("history_lengths", history_lengths, "length")
    # Bounded before summing (no int64 wrap-around).
    if history_lengths.numel() and int(history_lengths.max()) > n:
        raise ValueError(
            f"history_lengths: a length of {int(history_lengths.max())} exceeds the {n} "
            "history items"
        )
    if int(history_lengths.sum()) != n:
        raise ValueError(
            f"history_lengths: add up to {int(history_lengths.sum())} but there are {n} "
            "history items"
        )
    if not isinstance(labels, torch.Tensor) or labels.is_complex():
        got = getattr(labels, "dtype", type(labels).__name__)
        raise ValueError(f"labels: expected a real tensor, got {got}")
    if labels.dim() != 1 or labels.numel() != b:
        raise ValueError(f"labels: expected shape [{b}], got {list(labels.shape)}")
    if user_ids is not None:
        user_ids = _check_ids("user_ids", user_ids, b)
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"meta: expected a dict of tensors, got {type(meta).__name__}")
    all_items = torch.cat([candidate_items, history_items])
    if dedup:
        unique, inverse = torch.unique(all_items, return_inverse=True)
    else:
        unique, inverse = all_items, torch.arange(all_items.numel())
    feats = item_features(unique)
    if not isinstance(feats, ItemFeatures):
        raise ValueError(
            f"item_features: expected it to return ItemFeatures, got {type(feats).__name__}"
        )
    title = None
    if feats.title_values is not None and feats.title_lengths is not None:
        title = KeyedJaggedTensor(
            keys=[TITLE_WORDS],
            values=feats.title_values.long(),
            lengths=feats.title_lengths.long(),
        )
    if behavior_types.numel() == 0:  # the placeholder behaviour (module docstring)
        behavior_types = behavior_time_buckets = torch.zeros(1, dtype=torch.int64)
    return MARNBatch(
        item_sparse=feats.sparse_kjt(),
        item_title=title,
        item_image=feats.image,
        candidate_index=inverse[:b],
        history_index=inverse[b:],
        history_lengths=history_lengths,
        history_property=single_value_kjt(
            {BEHAVIOR_TYPE: behavior_types, BEHAVIOR_TIME: behavior_time_buckets}
        ),
        labels=labels.float(),
        user_ids=user_ids if user_ids is not None else torch.zeros(b, dtype=torch.long),
        meta=dict(meta or {}),
    )
