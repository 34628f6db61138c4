"""Loading a prepared directory (``marn_rec.data.prepare``'s output) as resumable MARNBatch streams.

:class:`PreparedDataset` holds the manifest and the item table in memory (numpy arrays, handed to
torch without copy; images stay in ``image_vectors.npy``, memory-mapped) and looks up
:class:`~marn_rec.batch.ItemFeatures` of item rows. :class:`PreparedBatchDataset` is a map-style dataset of whole batches of one split, sharded
by rank like the synthetic loader (:func:`shard_batch_indices`), and :func:`make_prepared_loader`
wraps it in a ``torchdata`` ``StatefulDataLoader`` whose ``state_dict()`` resumes at the next batch.

Batches are contiguous row ranges of the split's parquet file (train.parquet was shuffled sample
by sample at preparation). The N samples are cut into a multiple of ``world_size`` batches of
``ceil`` / ``floor`` (N / batches) samples (at most ``batch_size``), so that every rank takes the
same number of steps AND every sample is read exactly once per pass. A batch decodes the one or two
row groups holding it; the last ones decoded are cached (consecutive batches share row groups).
Batches are assembled by :func:`marn_rec.batch.build_batch` (per-unique-item dedup, ``user_ids``,
``meta={"candidate_cold": [B] bool}``).

The item features a batch carries (keys of ``item_sparse``, in this order):

- the manifest's ``id_features`` (``item_id`` first): one value per item, or any number for a
  multi-valued feature (a null list is one value, row 0; an empty list none);
- the statistic buckets ``stat{k}_b{b}`` for k in manifest order, b in ``statistic_buckets``;
- ``item_title``: ``title_words`` KJT (0 to ``title.max_length`` words per item), None when the
  data has no title; ``item_image``: [U, image_dim] float32, a zero vector for an item without
  image, None when the data has no image.
"""

import json
import os
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from marn_rec.batch import ItemFeatures, MARNBatch, build_batch
from marn_rec.data.prepare import layout
from marn_rec.data.prepare.partition import hash_ids
from marn_rec.data.synthetic import shard_batch_indices
from marn_rec.features import statistic_feature

_CACHED_ROW_GROUPS = 2


def cold_item_dropout_problem(p: Any) -> Optional[str]:
    """Why ``p`` cannot be a ``cold_item_dropout`` (the end of a message), or None when it can."""
    if isinstance(p, (int, float)) and 0.0 <= p < 1.0:  # NaN fails the comparison too
        return None
    return f"must be in [0, 1), got {p}"


def _numpy(column: Any) -> np.ndarray:
    """A writable numpy copy of a (chunked) Arrow column without nulls (Arrow buffers are
    read-only, torch wants writable memory)."""
    return np.array(column.to_numpy(), copy=True)


def _tensor(column: Any) -> torch.Tensor:
    return torch.from_numpy(_numpy(column))


def _jagged(column: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(int64 lengths, int64 values) of a list column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return lengths, np.array(values, dtype=np.int64, copy=True)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.r_[0, np.cumsum(lengths)].astype(np.int64)


def _gather(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lengths, concatenated values) of the jagged rows ``rows``. In numpy: torch's CPU
    repeat_interleave costs milliseconds through its thread pool on a busy machine."""
    start = offsets[rows]
    lengths = offsets[rows + 1] - start
    first = np.cumsum(lengths) - lengths
    index = np.repeat(start - first, lengths) + np.arange(int(lengths.sum()))
    return torch.from_numpy(lengths), torch.from_numpy(values[index])


class PreparedDataset:
    """A prepared directory: its manifest and its item table (row r = item row r).

    Args:
        path: the directory ``prepare`` wrote.
    """

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, layout.MANIFEST)) as f:
            self.manifest: Dict[str, Any] = json.load(f)
        if self.manifest.get("format") != layout.FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected {layout.FORMAT!r}")
        m = self.manifest
        if changes := layout.changes_since(m):
            warnings.warn(f"{path}: prepared by an older marn_rec (prepare_version "
                          f"{m.get('prepare_version', 1)}, now {layout.PREPARE_VERSION}); prepare it "
                          f"again for: {changes}", stacklevel=2)
        table = pq.read_table(os.path.join(path, layout.ITEMS))
        if table.num_rows != m["num_items"]:
            raise ValueError(f"{path}: items.parquet has {table.num_rows} rows, manifest {m['num_items']}")
        self.num_items = m["num_items"]
        self.id_features: List[str] = [f["name"] for f in m["id_features"]]
        self.multi_valued = {f["name"] for f in m["id_features"] if f["multi_valued"]}
        self.statistic_features: List[str] = [
            statistic_feature(k, b) for k in range(len(m["statistics"])) for b in m["statistic_buckets"]
        ]
        # What an item the training period never observed lacks: its own item_id row (row 0 is
        # out of vocabulary) and its training-period counts (bucket 0 is missing). Its other ID
        # features, statistics of the item table, title and image describe it as any other item.
        self.unobserved_features: List[str] = [self.id_features[0]] + [
            statistic_feature(k, b)
            for k, name in enumerate(m["statistics"]) if name in layout.TRAINING_STATISTICS
            for b in m["statistic_buckets"]
        ]
        # Single-valued: [num_items] per feature. Multi-valued and titles: offsets + values.
        self._single: Dict[str, np.ndarray] = {}
        self._jagged: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for name in self.id_features + self.statistic_features:
            if name in self.multi_valued:
                lengths, values = _jagged(table.column(name))
                self._jagged[name] = (_offsets(lengths), values)
            else:
                self._single[name] = _numpy(table.column(name)).astype(np.int64)
        self._title: Optional[Tuple[np.ndarray, np.ndarray]] = None
        if m["title"] is not None:
            lengths, values = _jagged(table.column(layout.TITLE_WORDS))
            self._title = (_offsets(lengths), values)
        self.image_dim: Optional[int] = m["image_dim"]
        self._image_row = _numpy(table.column(layout.IMAGE_ROW)).astype(np.int64)
        self._image: Optional[np.ndarray] = None  # memory-mapped on first use, in each process

    def __getstate__(self) -> Dict[str, Any]:
        # Spawned workers: re-map the image file rather than pickling a copy of it.
        state = dict(self.__dict__)
        state["_image"] = None
        return state

    def split_path(self, split: str) -> str:
        if split not in layout.SPLIT_NAMES:
            raise ValueError(f"split must be one of {layout.SPLIT_NAMES}, got {split!r}")
        return os.path.join(self.path, layout.split_file(split))

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        if self._image is None:
            self._image = np.load(os.path.join(self.path, layout.IMAGE_VECTORS), mmap_mode="r")
        out = np.zeros((len(rows), self.image_dim), dtype=np.float32)
        image_row = self._image_row[rows]
        has = np.flatnonzero(image_row >= 0)
        if has.size:
            unique, inverse = np.unique(image_row[has], return_inverse=True)  # sorted reads
            out[has] = np.asarray(self._image[unique], dtype=np.float32)[inverse]
        return torch.from_numpy(out)

    def features(self, rows: torch.Tensor) -> ItemFeatures:
        """ItemFeatures of the item rows ``rows`` (1-d int64), keys in the module docstring's order."""
        rows = rows.long().numpy()
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_items):
            raise IndexError(f"item rows must be in [0, {self.num_items})")
        sparse: Dict[str, torch.Tensor] = {}
        sparse_lengths: Dict[str, torch.Tensor] = {}
        for name in self.id_features + self.statistic_features:
            if name in self._jagged:
                sparse_lengths[name], sparse[name] = _gather(*self._jagged[name], rows)
            else:
                sparse[name] = torch.from_numpy(self._single[name][rows])
        title_lengths = title_values = None
        if self._title is not None:
            title_lengths, title_values = _gather(*self._title, rows)
        return ItemFeatures(
            sparse=sparse,
            title_values=title_values,
            title_lengths=title_lengths,
            image=self._images(rows) if self.image_dim else None,
            sparse_lengths=sparse_lengths,
        )


def batch_bounds(num_samples: int, batch_size: int, world_size: int) -> np.ndarray:
    """Row boundaries of the global batches: a multiple of ``world_size`` batches, sizes differing
    by at most one, none larger than ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_samples == 0:
        return np.zeros(1, dtype=np.int64)
    if num_samples < world_size:
        raise ValueError(f"{num_samples} samples cannot give each of {world_size} ranks a batch")
    per_rank = -(-(-(-num_samples // batch_size)) // world_size)
    n = per_rank * world_size
    sizes = np.full(n, num_samples // n, dtype=np.int64)
    sizes[: num_samples % n] += 1
    return np.r_[0, np.cumsum(sizes)]


class PreparedBatchDataset(Dataset):
    """Batches of ``split`` read by ``rank`` of ``world_size``: item ``i`` is global batch
    ``order[rank + i * world_size]`` where ``order`` is the identity, or with ``seed`` a seeded
    permutation of blocks of consecutive batches (a different order per epoch: pass
    ``seed + epoch``).

    ``cold_item_dropout`` p > 0 shows each item of a batch, with probability p, as an item the
    training period never observed (``PreparedDataset.unobserved_features`` at row / bucket 0),
    as DropoutNet (Volkovs et al., NeurIPS 2017) drops the preference input so that a model learns
    to score cold items from their content. The draw depends on (``seed``, the global batch, the
    item row) alone: an item is dropped in every slot of its batch or in none (dedup and per-slot
    batches agree), and a resumed run sees the same batches.
    """

    def __init__(
        self,
        data: PreparedDataset,
        split: str,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 256,
        seed: Optional[int] = None,
        dedup: bool = True,
        cold_item_dropout: float = 0.0,
    ):
        if problem := cold_item_dropout_problem(cold_item_dropout):
            raise ValueError(f"cold_item_dropout {problem}")
        self.data, self.split, self.dedup = data, split, dedup
        self.seed, self.cold_item_dropout = seed, cold_item_dropout
        self.file = data.split_path(split)
        meta = pq.ParquetFile(self.file).metadata
        group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_start = np.r_[0, np.cumsum(group_rows)].astype(np.int64)
        self.num_samples = int(self._group_start[-1])
        self.bounds = batch_bounds(self.num_samples, batch_size, world_size)
        num_batches = len(self.bounds) - 1
        order = np.arange(num_batches)
        if seed is not None:
            # Whole blocks of batches move: a block holds about one row group per rank, so that a
            # rank still reads each row group it decodes for several consecutive batches (the
            # samples themselves were shuffled one by one at preparation).
            per_group = max(1, int(np.median(group_rows)) // batch_size) if group_rows else 1
            block = per_group * world_size
            blocks = np.random.default_rng([seed, 9]).permutation(-(-num_batches // block))
            order = np.concatenate([order[b * block : (b + 1) * block] for b in blocks]) if num_batches else order
        self.indices = [int(order[g]) for g in shard_batch_indices(num_batches, rank, world_size)]
        self._reader: Optional[Tuple[int, pq.ParquetFile]] = None
        self._cache: "OrderedDict[int, pa.Table]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> Dict[str, Any]:
        # Spawned workers open their own file and start with an empty cache.
        state = dict(self.__dict__)
        state["_reader"], state["_cache"] = None, OrderedDict()
        return state

    def _group(self, g: int) -> pa.Table:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        # A worker process opens its own file handle (a forked one would share the file offset).
        if self._reader is None or self._reader[0] != os.getpid():
            self._reader = (os.getpid(), pq.ParquetFile(self.file))
            self._cache.clear()
        table = self._reader[1].read_row_group(g)
        self._cache[g] = table
        while len(self._cache) > _CACHED_ROW_GROUPS:
            self._cache.popitem(last=False)
        return table

    def rows(self, start: int, stop: int) -> pa.Table:
        """Samples ``start`` to ``stop`` of the split file."""
        first = int(np.searchsorted(self._group_start, start, side="right")) - 1
        last = int(np.searchsorted(self._group_start, stop - 1, side="right")) - 1
        tables = [self._group(g) for g in range(first, last + 1)]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return table.slice(start - int(self._group_start[first]), stop - start)

    def __getitem__(self, i: int) -> MARNBatch:
        if not 0 <= i < len(self.indices):
            raise IndexError(f"batch {i} out of range for {len(self.indices)} batches")
        g = self.indices[i]
        t = self.rows(int(self.bounds[g]), int(self.bounds[g + 1]))
        lengths, history = _jagged(t.column(layout.HISTORY))
        behavior = _jagged(t.column(layout.HISTORY_BEHAVIOR))[1]
        time_bucket = _jagged(t.column(layout.HISTORY_TIME_BUCKET))[1]
        return build_batch(
            candidate_items=_tensor(t.column(layout.CANDIDATE)),
            history_items=torch.from_numpy(history),
            history_lengths=torch.from_numpy(lengths),
            behavior_types=torch.from_numpy(behavior),
            behavior_time_buckets=torch.from_numpy(time_bucket),
            labels=_tensor(t.column(layout.LABEL)),
            item_features=self._unobserved_view(g) if self.cold_item_dropout else self.data.features,
            user_ids=_tensor(t.column(layout.USER)),
            meta={layout.CANDIDATE_COLD: _tensor(t.column(layout.CANDIDATE_COLD))},
            dedup=self.dedup,
        )

    def _unobserved_view(self, g: int) -> Callable[[torch.Tensor], ItemFeatures]:
        """``data.features`` with each item row dropped (see the class docstring) with
        probability ``cold_item_dropout``, by a hash of the row salted with (seed, batch ``g``)."""
        salt = int(np.random.default_rng([self.seed or 0, g, 11]).integers(0, 2**62))

        def features(rows: torch.Tensor) -> ItemFeatures:
            out = self.data.features(rows)
            h = hash_ids(pa.array(rows.long().numpy() ^ salt))
            drop = torch.from_numpy((h >> np.uint64(11)).astype(np.float64) / 2.0**53 < self.cold_item_dropout)
            for name in self.data.unobserved_features:
                out.sparse[name] = torch.where(drop, 0, out.sparse[name])
            return out

        return features


def single_thread_worker(worker_id: int) -> None:
    # Workers share a few cores with the training process: one intra-op thread each.
    torch.set_num_threads(1)


def make_prepared_loader(
    path: str,
    split: str,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 256,
    num_workers: int = 0,
    seed: Optional[int] = None,
    dedup: bool = True,
    pin_memory: bool = False,
    prefetch_factor: Optional[int] = None,
    data: Optional[PreparedDataset] = None,
    cold_item_dropout: float = 0.0,
) -> StatefulDataLoader:
    """A resumable loader of the ``split`` ("train" or "test") batches of ``rank``.

    Args:
        path: the prepared directory.
        batch_size: samples per batch at most (see the module docstring for how N is cut).
        num_workers: reader processes (0: read in the calling process).
        seed: permutes the batch order (None: file order); pass ``seed + epoch`` per epoch.
        dedup: one row per unique item (True) or per slot (False), see :func:`build_batch`.
        data: an open :class:`PreparedDataset` of ``path`` to share between loaders.
        cold_item_dropout: show each item of a batch with this probability as one the training
            period never observed (:class:`PreparedBatchDataset`); for training batches.

    Example::

        loader = make_prepared_loader("prepared/", "train", rank, world, 256, seed=epoch)
        for step, batch in enumerate(loader):
            ...
            ckpt["loader"] = loader.state_dict()
        # later: loader.load_state_dict(ckpt["loader"]) resumes at the next batch
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    data = data if data is not None else PreparedDataset(path)
    dataset = PreparedBatchDataset(data, split, rank, world_size, batch_size, seed, dedup, cold_item_dropout)
    return StatefulDataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=single_thread_worker if num_workers > 0 else None,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
