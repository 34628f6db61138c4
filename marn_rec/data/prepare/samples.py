"""Pass 2 of preparation: one user shard at a time, events -> samples and training counts.

2a, per shard (every event of its users, about ``shard_events`` of them): exact duplicates dropped,
events put in time order per user (ties keep file order), users with too few behaviours dropped,
each event assigned to the training or test period, held-out cold items' training events dropped;
the per-item training counts (events, behaviours, distinct users, ratings) are accumulated and the
kept events saved. 2b, once every shard is through 2a (so that the training period's items, the
pool of training negatives, are known), per shard: every candidate event becomes a sample with its
history, ``chunk_samples`` candidates at a time.
Training samples go to randomly chosen shuffle buckets, test samples to one file in order; pass 3
finishes both. A sample's history is the user's behaviours strictly before its candidate in that
order (the latest ``max_length``): never a test-period event for a training sample, because the
training period of a user is a prefix of their sequence.
"""

import os
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from marn_rec.data.prepare import layout
from marn_rec.data.prepare.config import PrepareConfig
from marn_rec.data.prepare.partition import (
    ITEM,
    LABEL_VALUE,
    RATING_VALUE,
    TS,
    TYPE_VALUE,
    USER,
    Partition,
    read_temp,
    temp_writer,
)
from marn_rec.features import bucketize_time_gap

SAMPLE_SCHEMA = pa.schema(
    [
        (layout.USER, pa.int64()),
        (layout.CANDIDATE, pa.int64()),
        (layout.LABEL, pa.float32()),
        (layout.HISTORY, pa.list_(pa.int64())),
        (layout.HISTORY_BEHAVIOR, pa.list_(pa.int64())),  # global type codes until pass 3
        (layout.HISTORY_TIME_BUCKET, pa.list_(pa.int64())),
    ]
)


@dataclass
class Totals:
    """Per-item training-period accumulators over item rows, and the counters of the summary."""

    train_events: np.ndarray  # events (impressions too, in impression logs)
    train_behaviors: np.ndarray  # behaviours (positive events)
    train_users: np.ndarray  # distinct users with a training behaviour on the item
    rating_sum: np.ndarray
    rating_count: np.ndarray
    type_in_train: np.ndarray  # [global type codes] seen in a training behaviour
    counts: Counter

    @classmethod
    def zeros(cls, num_items: int, num_codes: int) -> "Totals":
        z = lambda dtype=np.int64: np.zeros(num_items, dtype=dtype)  # noqa: E731
        return cls(z(), z(), z(), z(np.float64), z(), np.zeros(num_codes, dtype=bool), Counter())


class SampleWriter:
    """Temporary sample files: training samples into ``num_buckets`` shuffle buckets chosen at
    random, test samples into one file in order."""

    def __init__(self, tmp_dir: str, num_buckets: int):
        self.bucket_paths = [os.path.join(tmp_dir, f"train-{b:05d}.arrow") for b in range(num_buckets)]
        self.test_path = os.path.join(tmp_dir, "test.arrow")
        self._train: List[Optional[pa.ipc.RecordBatchStreamWriter]] = [None] * num_buckets
        self._test = temp_writer(self.test_path, SAMPLE_SCHEMA)

    def train(self, table: pa.Table, rng: np.random.Generator) -> None:
        k = len(self._train)
        bucket = rng.integers(0, k, size=table.num_rows)
        order = np.argsort(bucket, kind="stable")
        table = table.take(pa.array(order))
        bounds = np.searchsorted(bucket[order], np.arange(k + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            if self._train[b] is None:
                self._train[b] = temp_writer(self.bucket_paths[b], SAMPLE_SCHEMA)
            self._train[b].write_table(table.slice(bounds[b], bounds[b + 1] - bounds[b]))

    def test(self, table: pa.Table) -> None:
        self._test.write_table(table)

    def close(self) -> List[str]:
        """Closes all files; returns the training buckets that received samples."""
        self._test.close()
        out = []
        for path, w in zip(self.bucket_paths, self._train):
            if w is not None:
                w.close()
                out.append(path)
        return out


@dataclass
class Pool:
    """Item rows negatives are drawn from, and the position of every item row in it (-1: absent)."""

    items: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, items: np.ndarray, num_items: int) -> "Pool":
        index = np.full(num_items, -1, dtype=np.int64)
        index[items] = np.arange(len(items))
        return cls(items.astype(np.int64), index)


@dataclass
class Context:
    """What every shard needs from passes 1 and 3's set-up."""

    cfg: PrepareConfig
    part: Partition
    held_out: np.ndarray  # bool [num_items]: cold items held out of the training period
    # Training negatives: the items with a training-period event, known once every shard's events
    # are filtered (pass 2a). An item without one has no embedding row of its own (it maps to the
    # OOV row), so drawing it as a training negative would teach "OOV means no click" and bias
    # exactly the cold candidates of the test period. Held-out items have no training event.
    train_pool: Optional[Pool]
    test_pool: Pool  # test negatives: the whole catalogue
    cutoff: Optional[int]  # first test timestamp of the time split


def _blocks(user: np.ndarray) -> np.ndarray:
    """Start index of each user's block in a user-sorted array (plus the end)."""
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if n else np.zeros(0, np.int64)
    return np.r_[starts, n]


def _jagged_index(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], start[i] + length[i])`` over i."""
    total = int(length.sum())
    first = np.cumsum(length) - length
    return np.repeat(start - first, length) + np.arange(total)


def _list(offsets_from_lengths: np.ndarray, values: np.ndarray) -> pa.Array:
    offsets = np.r_[0, np.cumsum(offsets_from_lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))


def negatives(pos: np.ndarray, k: int, pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """[len(pos), k] items drawn uniformly from the pool, never the positive itself: a draw among
    the pool's other items, shifted past the positive's own position."""
    at = pool.index[pos]
    size = len(pool.items) - (at >= 0)
    if (size <= 0).any():
        raise ValueError(f"cannot draw a negative other than the positive: the pool of negatives has "
                         f"{len(pool.items)} item(s) (training negatives: the items with a row of their "
                         f"own, i.e. at least min_count training-period events)")
    r = rng.integers(0, size[:, None], size=(len(pos), k))
    r += (at[:, None] >= 0) & (r >= at[:, None])
    return pool.items[r]


class ShardProcessor:
    """Pass 2 over the shards, in order; user rows continue from shard to shard.

    :meth:`filter` (2a) cleans, splits and counts one shard's events and saves them; once every
    shard has been filtered the training period's items are known, and :meth:`samples` (2b) turns
    the saved events into samples with negatives drawn among them.
    """

    def __init__(self, ctx: Context, totals: Totals, writer: SampleWriter, user_vocab: pq.ParquetWriter):
        self.ctx, self.totals, self.writer, self.user_vocab = ctx, totals, writer, user_vocab
        self.next_user_row = 1

    def filter(self, shard: int, path: str) -> str:
        """Pass 2a of one shard: returns the path of its kept events (``path`` + ``.events.npz``)."""
        cfg, counts = self.ctx.cfg, self.totals.counts
        t = read_temp(path)
        users = t.column(USER).combine_chunks()
        distinct = pc.unique(users)
        distinct = distinct.take(pc.sort_indices(distinct))  # user rows in raw-id order
        ev = self._events(t, users, distinct)

        # Exact duplicates: equal in every column but the row number; the first one stays.
        keys = [ev.user, ev.ts, ev.item, ev.code, ev.label.astype(np.int64)]
        if ev.rating is not None:
            keys.append(ev.rating.view(np.int64))
        order = np.lexsort(keys[::-1])
        same = np.ones(max(0, len(order) - 1), dtype=bool)
        for key in keys:
            same &= key[order[1:]] == key[order[:-1]]
        duplicate = np.zeros(len(ev), dtype=bool)
        duplicate[order[1:][same]] = True
        counts["duplicate_events_dropped"] += int(duplicate.sum())
        ev = ev.select(~duplicate)

        # The shard is in file order: count the events older than the user's event before them.
        by_user = np.argsort(ev.user, kind="stable")
        u, ts = ev.user[by_user], ev.ts[by_user]
        counts["unsorted_timestamps_sorted"] += int(((u[1:] == u[:-1]) & (ts[1:] < ts[:-1])).sum())
        ev = ev.select(np.lexsort((ev.ts, ev.user)))  # stable: equal timestamps keep file order

        # Users with too few behaviours give nothing; the others get rows.
        bounds = _blocks(ev.user)
        behaviours = np.add.reduceat(ev.positive.astype(np.int64), bounds[:-1]) if len(ev) else bounds[:0]
        eligible = behaviours >= cfg.user_min_behaviors
        keep = np.repeat(eligible, np.diff(bounds))
        counts["users_too_few_behaviors_dropped"] += int((~eligible).sum())
        counts["events_of_users_too_few_behaviors_dropped"] += int((~keep).sum())
        kept_users = ev.user[bounds[:-1]][eligible]
        rows = np.zeros(len(distinct), dtype=np.int64)
        rows[kept_users] = self.next_user_row + np.arange(len(kept_users))
        if len(kept_users):
            self.user_vocab.write_table(
                pa.table({"value": distinct.take(pa.array(kept_users)), "row": pa.array(rows[kept_users])})
            )
        self.next_user_row += len(kept_users)
        counts["users"] += len(kept_users)
        ev = ev.select(keep)

        # The split, then held-out cold items leave the training period.
        is_test = self._test_period(ev.user, ev.ts, ev.positive)
        held = self.ctx.held_out[ev.item] & ~is_test
        counts["held_out_training_events_dropped"] += int(held.sum())
        ev, is_test = ev.select(~held), is_test[~held]
        self._accumulate(ev, ~is_test)
        out = path + ".events.npz"
        arrays = dict(user=ev.user, item=ev.item, ts=ev.ts, code=ev.code, label=ev.label)
        if ev.rating is not None:
            arrays["rating"] = ev.rating
        np.savez(out, rows=rows, is_test=is_test, **arrays)
        os.remove(path)  # read by nothing after this: the temporary space stays one copy
        return out

    def samples(self, shard: int, events_path: str) -> None:
        """Pass 2b of one shard: the samples of the events :meth:`filter` saved."""
        if self.ctx.train_pool is None:
            raise RuntimeError("samples() before every shard was filtered (the training pool is unknown)")
        with np.load(events_path) as z:
            ev = _Events(z["user"], z["item"], z["ts"], z["code"], z["label"],
                         z["rating"] if "rating" in z.files else None)
            rows, is_test = z["rows"], z["is_test"]
        os.remove(events_path)
        self._samples(shard, rows, ev, is_test)

    def _events(self, t: pa.Table, users: pa.Array, distinct: pa.Array) -> "_Events":
        part = self.ctx.part
        n = t.num_rows
        if part.type_source is not None:  # global type code: 0 missing, else value index + 1
            code = pc.index_in(t.column(TYPE_VALUE), value_set=part.type_values)
            code = pc.fill_null(code, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        else:
            code = np.ones(n, dtype=np.int64)  # the one type "interaction"
        label = t.column(LABEL_VALUE).to_numpy() if part.labelled else np.ones(n, np.float32)
        return _Events(
            user=pc.index_in(users, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64),
            item=t.column(ITEM).to_numpy(),
            ts=t.column(TS).to_numpy(),
            code=code,
            label=label,
            rating=pc.fill_null(t.column(RATING_VALUE), np.nan).to_numpy() if part.has_rating else None,
        )

    def _test_period(self, user: np.ndarray, ts: np.ndarray, positive: np.ndarray) -> np.ndarray:
        if self.ctx.cfg.split == "time":
            return ts >= self.ctx.cutoff
        n = len(user)
        bounds = _blocks(user)
        if n == 0:
            return np.zeros(0, dtype=bool)
        # "last": from the user's last behaviour on (just that one event without labels).
        last = np.maximum.reduceat(np.where(positive, np.arange(n), -1), bounds[:-1])
        last = np.where(last < 0, n, last)
        return np.arange(n) >= np.repeat(last, np.diff(bounds))

    def _accumulate(self, ev: "_Events", train: np.ndarray) -> None:
        tot, m = self.totals, len(self.totals.train_events)
        tot.train_events += np.bincount(ev.item[train], minlength=m)
        behaviour = train & ev.positive
        tot.train_behaviors += np.bincount(ev.item[behaviour], minlength=m)
        pairs = np.unique(ev.user[behaviour] * m + ev.item[behaviour])
        tot.train_users += np.bincount(pairs % m, minlength=m)
        tot.type_in_train[np.unique(ev.code[behaviour])] = True
        if ev.rating is not None:
            rated = train & ~np.isnan(ev.rating)
            tot.rating_sum += np.bincount(ev.item[rated], weights=ev.rating[rated], minlength=m)
            tot.rating_count += np.bincount(ev.item[rated], minlength=m)

    def _samples(self, shard: int, user_rows: np.ndarray, ev: "_Events", is_test: np.ndarray) -> None:
        cfg, counts = self.ctx.cfg, self.totals.counts
        n = len(ev)
        before = np.cumsum(ev.positive) - ev.positive  # behaviours before each event (exclusive)
        bounds = _blocks(ev.user)
        user_first = np.repeat(before[bounds[:-1]], np.diff(bounds)) if n else before
        behaviour_at = np.flatnonzero(ev.positive)
        candidates = np.arange(n) if self.ctx.part.labelled else behaviour_at
        end = before[candidates]
        start = np.maximum(user_first[candidates], end - cfg.max_length)
        short = end - start < cfg.min_history
        counts["candidates_short_history_dropped"] += int(short.sum())
        # Separate streams: training samples never depend on the test period's draws.
        rngs = {
            False: (np.random.default_rng([cfg.seed, shard, 1]), np.random.default_rng([cfg.seed, shard, 2])),
            True: (np.random.default_rng([cfg.seed, shard, 3]), None),
        }
        for test in (False, True):
            sel = np.flatnonzero(~short & (is_test[candidates] == test))
            neg_rng, bucket_rng = rngs[test]
            for lo in range(0, len(sel), cfg.chunk_samples):
                s = sel[lo : lo + cfg.chunk_samples]
                table = self._chunk(
                    ev, user_rows, candidates[s], start[s], end[s] - start[s], behaviour_at,
                    self.ctx.test_pool if test else self.ctx.train_pool, neg_rng,
                )
                counts["test_samples" if test else "train_samples"] += table.num_rows
                if test:
                    self.writer.test(table)
                else:
                    self.writer.train(table, bucket_rng)

    def _chunk(self, ev, user_rows, cand, hist_start, hist_len, behaviour_at, pool, rng) -> pa.Table:
        cfg = self.ctx.cfg
        m = len(cand)
        if self.ctx.part.labelled:
            per, candidate, labels = 1, ev.item[cand], ev.label[cand]
        else:
            per = 1 + cfg.negatives
            negs = negatives(ev.item[cand], cfg.negatives, pool, rng)
            candidate = np.column_stack([ev.item[cand], negs]).ravel()
            labels = np.tile(np.r_[1.0, np.zeros(cfg.negatives)], m)
        which = np.repeat(np.arange(m), per)  # the event each output row was made from
        lengths = hist_len[which]
        history = behaviour_at[_jagged_index(hist_start[which], lengths)]
        gaps = np.repeat(ev.ts[cand][which], lengths) - ev.ts[history]
        buckets = bucketize_time_gap(torch.from_numpy(gaps), cfg.num_time_buckets).numpy()
        return pa.Table.from_arrays(
            [
                pa.array(user_rows[ev.user[cand]][which]),
                pa.array(candidate.astype(np.int64)),
                pa.array(labels.astype(np.float32)),
                _list(lengths, ev.item[history]),
                _list(lengths, ev.code[history]),
                _list(lengths, buckets),
            ],
            schema=SAMPLE_SCHEMA,
        )


@dataclass
class _Events:
    """The events of a shard as parallel arrays (user: code within the shard, sorted by raw ID)."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    code: np.ndarray  # global behaviour type code
    label: np.ndarray  # float32, 1.0 without a label column
    rating: Optional[np.ndarray]  # float64, NaN = missing; None without a rating column

    @property
    def positive(self) -> np.ndarray:
        return self.label == 1.0

    def __len__(self) -> int:
        return len(self.item)

    def select(self, index: np.ndarray) -> "_Events":
        """The events at ``index`` (a boolean mask or positions)."""
        return _Events(
            self.user[index], self.item[index], self.ts[index], self.code[index], self.label[index],
            None if self.rating is None else self.rating[index],
        )
