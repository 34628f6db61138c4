"""Pass 1 of preparation: stream interactions.parquet once and hash-partition it by user.

Each record batch is mapped to item rows (unknown items raise or are dropped and counted), and
its events are appended to one of K temporary shards chosen by a hash of the user, so that
pass 2 finds every event of a user in one shard of about ``shard_events`` events. Nothing
log-sized is kept: besides the shards, only the distinct behaviour types (or ratings) and a
per-day count of timestamps (for the time split's cutoff) are collected.

Temporary files are Arrow IPC streams, not parquet: a parquet writer keeps the metadata of every
row group it wrote in memory until it is closed, which would grow with the log (many small appends
to many open files); a stream writer keeps nothing.
"""

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from marn_rec.data.prepare.config import PrepareConfig
from marn_rec.data.prepare.items import RawItems
from marn_rec.data.schema import BEHAVIOR, ITEM_ID, LABEL, RATING, TIMESTAMP, USER_ID, DataError, RawDataset

# Columns of the temporary shards.
USER, ITEM, TS, ROW, TYPE_VALUE, RATING_VALUE, LABEL_VALUE = "user", "item", "ts", "row", "type", "rating", "label"

# Ratings become behaviour types (one per distinct value) only while they are few: a continuous
# rating would give a type per event.
MAX_RATING_TYPES = 64
DAY = 86_400


@dataclass
class Partition:
    """What pass 1 wrote and found."""

    shards: List[str]
    events: int  # events written (item known)
    labelled: bool
    has_rating: bool
    type_source: Optional[str]  # "behavior", "rating" or None (one behaviour type)
    type_values: pa.Array  # sorted distinct values of the type source (global code = index + 1)
    day_counts: Dict[int, int] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def temp_writer(path: str, schema: pa.Schema) -> pa.ipc.RecordBatchStreamWriter:
    """An append-only temporary file (Arrow IPC stream, lz4)."""
    return pa.ipc.new_stream(path, schema, options=_IPC_OPTIONS)


def read_temp(path: str) -> pa.Table:
    with pa.ipc.open_stream(path) as reader:
        return reader.read_all()


def iter_temp(path: str):
    """The record batches of a temporary file, one at a time."""
    with pa.ipc.open_stream(path) as reader:
        yield from reader


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads similar keys (user 1, 2, 3...) over all shards."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_ids(ids: pa.Array) -> np.ndarray:
    """A stable uint64 hash of every int or string ID, vectorised over Arrow's buffers (pyarrow
    has no public hash kernel; Python's hash() of str is salted per process)."""
    if pa.types.is_integer(ids.type):
        return _mix(ids.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))
    ids = ids.cast(pa.large_string())
    n = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset : ids.offset + n + 1]
    lengths = np.diff(offsets)
    h = lengths.astype(np.uint64)
    total = int(offsets[-1] - offsets[0])
    if total:
        data = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].astype(np.uint64)
        starts = offsets[:-1] - offsets[0]
        position = np.arange(total) - np.repeat(starts, lengths)
        with np.errstate(over="ignore"):
            powers = np.cumprod(np.full(int(lengths.max()), 1099511628211, dtype=np.uint64))
            nonempty = lengths > 0
            h[nonempty] += np.add.reduceat(data * powers[position], starts[nonempty])
    return _mix(h)


def _type_source(info: RawDataset) -> Optional[str]:
    if BEHAVIOR in info.interaction_columns:
        return BEHAVIOR
    if RATING in info.interaction_columns:
        return RATING
    return None


def partition(info: RawDataset, items: RawItems, cfg: PrepareConfig, tmp_dir: str) -> Partition:
    """Pass 1: writes ``tmp_dir/shard-*.parquet``; returns what later passes need."""
    path = info.interactions_path
    columns = [USER_ID, ITEM_ID, TIMESTAMP] + list(info.interaction_columns)
    source = _type_source(info)
    labelled = LABEL in info.interaction_columns
    has_rating = RATING in info.interaction_columns
    num_shards = max(1, math.ceil(info.num_interactions / cfg.shard_events))
    paths = [os.path.join(tmp_dir, f"shard-{k:05d}.arrow") for k in range(num_shards)]
    writers: List[Optional[pa.ipc.RecordBatchStreamWriter]] = [None] * num_shards
    type_values: set = set()
    days: Counter = Counter()
    counts: Counter = Counter()
    start = 0
    bar = tqdm(total=info.num_interactions, unit="ev", desc="prepare 1/3 partition", disable=not cfg.progress)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=cfg.read_rows, columns=columns):
        n = batch.num_rows
        rows = items.rows_of(batch.column(ITEM_ID))
        keep = rows > 0
        if not keep.all():
            first = int(np.argmin(keep))
            if cfg.unknown_items == "error":
                raise DataError(
                    path,
                    f"item_id {batch.column(ITEM_ID)[first].as_py()!r} is not in items.parquet "
                    "(unknown_items='drop' drops such events)",
                    column=ITEM_ID,
                    row=start + first,
                )
            counts["unknown_item_events_dropped"] += int((~keep).sum())
        idx = np.flatnonzero(keep)
        ts = batch.column(TIMESTAMP).to_numpy(zero_copy_only=False)[idx]
        data = {
            USER: batch.column(USER_ID).take(pa.array(idx)),
            ITEM: pa.array(rows[idx]),
            TS: pa.array(ts),
            ROW: pa.array(start + idx),
        }
        if source is not None:
            data[TYPE_VALUE] = batch.column(source).take(pa.array(idx))
            type_values.update(v for v in pc.unique(data[TYPE_VALUE]).to_pylist() if v is not None)
            if source == RATING and len(type_values) > MAX_RATING_TYPES:
                raise DataError(
                    path,
                    f"more than {MAX_RATING_TYPES} distinct ratings: too many to be behaviour types "
                    "(add a 'behavior' column, e.g. one constant value)",
                    column=RATING,
                )
        if has_rating:
            data[RATING_VALUE] = batch.column(RATING).take(pa.array(idx)).cast(pa.float64())
        if labelled:
            data[LABEL_VALUE] = batch.column(LABEL).take(pa.array(idx)).cast(pa.float32())
        if cfg.split == "time":
            d, c = np.unique(np.floor_divide(ts, DAY), return_counts=True)
            days.update(dict(zip(d.tolist(), c.tolist())))
        table = pa.table(data)
        shard = (hash_ids(data[USER]) % np.uint64(num_shards)).astype(np.int64)
        order = np.argsort(shard, kind="stable")
        table = table.take(pa.array(order))
        bounds = np.searchsorted(shard[order], np.arange(num_shards + 1))
        for k in range(num_shards):
            if bounds[k + 1] > bounds[k]:
                if writers[k] is None:
                    writers[k] = temp_writer(paths[k], table.schema)
                writers[k].write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))
        counts["events_read"] += n
        start += n
        bar.update(n)
    bar.close()
    for w in writers:
        if w is not None:
            w.close()
    kept = counts["events_read"] - counts["unknown_item_events_dropped"]
    if kept == 0:
        raise DataError(path, "no interaction left after dropping unknown items")
    values = sorted(type_values)
    type_array = pa.array(values, type=table.schema.field(TYPE_VALUE).type if source else pa.string())
    return Partition(
        shards=[p for p, w in zip(paths, writers) if w is not None],
        events=kept,
        labelled=labelled,
        has_rating=has_rating,
        type_source=source,
        type_values=type_array,
        day_counts=dict(days),
        counts=counts,
    )


def time_cutoff(part: Partition, test_fraction: float) -> int:
    """The timestamp of the event at quantile ``1 - test_fraction`` of all events (in time order):
    events at or after it are the test period. Exact, in bounded memory: the day holding it comes
    from pass 1's per-day counts, the second within it from one scan of the shards' timestamps."""
    k = min(part.events - 1, int(math.floor((1.0 - test_fraction) * part.events)))
    seen = 0
    for day in sorted(part.day_counts):
        if seen + part.day_counts[day] > k:
            break
        seen += part.day_counts[day]
    per_second = np.zeros(DAY, dtype=np.int64)
    for path in part.shards:
        ts = read_temp(path).column(TS).to_numpy()
        in_day = ts[np.floor_divide(ts, DAY) == day] - day * DAY
        per_second += np.bincount(in_day, minlength=DAY)
    second = int(np.searchsorted(np.cumsum(per_second), k - seen, side="right"))
    return day * DAY + second
