"""``prepare``: the three passes from a raw directory to a prepared one, and pass 3 itself.

1. (``partition``) stream interactions.parquet, hash-partition it by user into temporary shards;
2. (``samples``) per shard: clean, split, count the training period, write samples to temporary
   shuffle buckets (train) and one file (test);
3. (here) vocabularies and statistics from the training counts; items.parquet; train.parquet
   shuffled bucket by bucket, test.parquet in order, both with ``candidate_cold`` and behaviour
   types renumbered by the training vocabulary; vocab/; manifest.json, written last.

Peak memory is bounded by the largest of: one record batch of ``read_rows`` events, one shard of
about ``shard_events`` events, one chunk of ``chunk_samples`` samples, one shuffle bucket of about
``bucket_samples`` samples, and the catalogue-sized arrays; it does not grow with the log.
"""

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from marn_rec.data.prepare import items as item_side
from marn_rec.data.prepare import layout
from marn_rec.data.prepare.config import PrepareConfig
from marn_rec.data.prepare.partition import Partition, iter_temp, partition, read_temp, time_cutoff
from marn_rec.data.prepare.samples import Context, Pool, SampleWriter, ShardProcessor, Totals
from marn_rec.data.schema import RATING, DataError, validate_raw

# Reasons for dropping data, all reported (0 included) in the summary's "dropped".
DROP_REASONS = (
    "unknown_item_events",
    "duplicate_events",
    "users_too_few_behaviors",
    "events_of_users_too_few_behaviors",
    "held_out_training_events",
    "candidates_short_history",
)
MAX_BUCKETS = 2048  # open files during pass 2; past this, buckets grow beyond bucket_samples
OUTPUT_SCHEMA = pa.schema(
    [
        (layout.USER, pa.int64()),
        (layout.CANDIDATE, pa.int64()),
        (layout.LABEL, pa.float32()),
        (layout.HISTORY, pa.list_(pa.int64())),
        (layout.HISTORY_BEHAVIOR, pa.list_(pa.int64())),
        (layout.HISTORY_TIME_BUCKET, pa.list_(pa.int64())),
        (layout.CANDIDATE_COLD, pa.bool_()),
    ]
)


class RowGroupWriter:
    """A parquet file written in row groups of exactly ``rows`` rows (the last one excepted)."""

    def __init__(self, path: str, schema: pa.Schema, rows: int):
        self.writer = pq.ParquetWriter(path, schema)
        self.rows = rows
        self.pending: List[pa.Table] = []
        self.count = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.count += table.num_rows
        if self.count < self.rows:
            return
        t = pa.concat_tables(self.pending)
        full = self.count // self.rows * self.rows
        self.writer.write_table(t.slice(0, full), row_group_size=self.rows)
        rest = t.slice(full)
        self.pending, self.count = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.count:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.rows)
        self.writer.close()


def _finish(table: pa.Table, behavior_rows: np.ndarray, train_events: np.ndarray) -> pa.Table:
    """A temporary sample table in the output layout: behaviour codes -> training vocabulary rows,
    and ``candidate_cold``."""
    hb = table.column(layout.HISTORY_BEHAVIOR).combine_chunks()
    lengths = pc.list_value_length(hb).to_numpy(zero_copy_only=False)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = behavior_rows[pc.list_flatten(hb).to_numpy(zero_copy_only=False)]
    candidate = table.column(layout.CANDIDATE).to_numpy()
    return pa.Table.from_arrays(
        [
            table.column(layout.USER),
            table.column(layout.CANDIDATE),
            table.column(layout.LABEL),
            table.column(layout.HISTORY),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            table.column(layout.HISTORY_TIME_BUCKET),
            pa.array(train_events[candidate] == 0),
        ],
        schema=OUTPUT_SCHEMA,
    )


def _behavior_vocab(part: Partition, totals: Totals) -> tuple:
    """Behaviour types of the training period: row 0 "<missing>" (null behaviour, or a type only
    the test period has), then the training period's values in ascending order."""
    seen = np.flatnonzero(totals.type_in_train[1:]) + 1  # global codes (value index + 1)
    rows = np.zeros(len(totals.type_in_train), dtype=np.int64)
    rows[seen] = np.arange(1, len(seen) + 1)
    if part.type_source is None:
        values, labels = pa.array(["interaction"])[: len(seen)], ["interaction"][: len(seen)]
    else:
        values = part.type_values.take(pa.array(seen - 1, pa.int64()))
        fmt = (lambda v: f"rating={v:g}") if part.type_source == RATING else str
        labels = [fmt(v) for v in values.to_pylist()]
    table = pa.table({"value": values, "row": pa.array(rows[seen]), "label": pa.array(labels, pa.string())})
    return rows, [layout.MISSING_LABEL] + labels, table


def _write_samples(paths: List[str], out: str, cfg: PrepareConfig, shuffle: bool, finish) -> None:
    writer = RowGroupWriter(out, OUTPUT_SCHEMA, cfg.row_group_size)
    for b, path in enumerate(tqdm(paths, desc=f"prepare 3/3 {os.path.basename(out)}", disable=not cfg.progress)):
        if shuffle:  # one bucket in memory, in a seeded random order
            table = read_temp(path)
            perm = np.random.default_rng([cfg.seed, b, 4]).permutation(table.num_rows)
            writer.write(finish(table.take(pa.array(perm))))
        else:
            for batch in iter_temp(path):
                writer.write(finish(pa.Table.from_batches([batch])))
    writer.close()


def _write_vocab(out_dir: str, name: str, table: pa.Table) -> None:
    path = os.path.join(out_dir, layout.VOCAB_DIR, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)


@dataclass
class _ItemSide:
    """What pass 3 wrote on the item side, for the manifest and the summary."""

    features: List[item_side.Encoded]
    titles: Optional[item_side.Titles]
    statistics: List[str]
    boundaries: Dict[str, Dict[str, List[float]]]
    word_vectors_found: Optional[int]


def _clean_out_dir(out_dir: str) -> str:
    """Creates ``out_dir`` (or clears what an earlier run left there); returns its temp folder."""
    os.makedirs(out_dir, exist_ok=True)
    # A manifest marks a complete directory (it is written last); optional files of an earlier
    # run must not survive into this one.
    for name in (layout.MANIFEST, layout.TITLE_VECTORS, layout.IMAGE_VECTORS):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    shutil.rmtree(os.path.join(out_dir, layout.VOCAB_DIR), ignore_errors=True)
    os.makedirs(os.path.join(out_dir, layout.VOCAB_DIR))
    tmp = os.path.join(out_dir, "_tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def _write_item_side(
    items: item_side.RawItems, part: Partition, totals: Totals, cfg: PrepareConfig, out_dir: str
) -> _ItemSide:
    """items.parquet, item_statistics.parquet, the item vocabularies, title vectors and images."""
    features = item_side.categorical_features(items, totals.train_events, cfg.min_count)
    titles = item_side.titles(items, cfg.title_length)
    per_item = {layout.INTERACTIONS: totals.train_behaviors, layout.USERS: totals.train_users}
    if part.has_rating:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_item[layout.MEAN_RATING] = np.where(totals.rating_count > 0, totals.rating_sum / totals.rating_count, np.nan)
    if part.labelled:
        per_item[layout.IMPRESSIONS] = totals.train_events
    # An item without a training-period event was never observed: its counts are unknown, not 0.
    # A 0 would put it in the bucket of the least popular training items (every training item has
    # at least one event), which uniform negatives teach as "not clicked"; missing is bucket 0.
    training_items = totals.train_events > 0
    per_item = {name: np.where(training_items, values, np.nan) for name, values in per_item.items()}
    stats = item_side.raw_statistics(items, per_item)
    buckets: Dict[str, np.ndarray] = {}
    boundaries: Dict[str, Dict[str, List[float]]] = {}
    for k, (name, values) in enumerate(stats.items()):
        boundaries[name] = {}
        for b in cfg.statistic_buckets:
            buckets[f"stat{k}_b{b}"], boundaries[name][str(b)] = item_side.discretise(values, training_items, b)
    table = item_side.item_table(features, buckets, titles, item_side.image_rows(items))
    pq.write_table(table, os.path.join(out_dir, layout.ITEMS))
    raw = pa.table({"item_row": pa.array(np.arange(items.num_items)), **{k: pa.array(v) for k, v in stats.items()}})
    pq.write_table(raw, os.path.join(out_dir, layout.ITEM_STATISTICS))
    rows = pa.array(np.arange(1, items.num_items, dtype=np.int64))
    _write_vocab(out_dir, layout.ITEM_ROW_VOCAB, pa.table({"value": items.ids, "row": rows}))
    for f in features:
        _write_vocab(out_dir, f"{layout.FEATURE_VOCAB_DIR}/{f.name}.parquet", f.vocab.table())
    found: Optional[int] = None
    if titles is not None:
        _write_vocab(out_dir, layout.TITLE_VOCAB, titles.vocab.table())
        if cfg.word_vectors:
            matrix, found = item_side.word_vectors(cfg.word_vectors, titles.vocab, cfg.seed)
            np.save(os.path.join(out_dir, layout.TITLE_VECTORS), matrix)
    if items.info.image_vectors_path:
        dst = os.path.join(out_dir, layout.IMAGE_VECTORS)
        try:
            os.link(items.info.image_vectors_path, dst)  # no copy of a large file where possible
        except OSError:
            shutil.copyfile(items.info.image_vectors_path, dst)
    return _ItemSide(features, titles, list(stats), boundaries, found)


def prepare(raw_dir: str, out_dir: str, config: PrepareConfig = PrepareConfig()) -> Dict[str, Any]:
    """Prepares the raw directory ``raw_dir`` (user format) into ``out_dir`` (prepared format).

    Returns the summary (also printed in one line and stored in the manifest): what was read and
    written, and everything dropped, by reason. Raises ``DataError`` on bad data.
    """
    cfg, t0 = config, time.time()
    info = validate_raw(raw_dir, unknown_items="error" if cfg.unknown_items == "error" else "count",
                        batch_rows=cfg.read_rows)
    items = item_side.read_items(info)
    if cfg.word_vectors and info.title_column is None:
        raise DataError(info.items_path, "word_vectors given, but there is no title or title_tokens column")
    n_items = items.num_items
    tmp = _clean_out_dir(out_dir)

    # Pass 1.
    part = partition(info, items, cfg, tmp)
    cutoff = time_cutoff(part, cfg.test_fraction) if cfg.split == "time" else None

    # Held-out cold items: a seeded fraction of the catalogue (not of the log, so that the choice
    # depends on no event).
    held_out = np.zeros(n_items, dtype=bool)
    n_held = int(round(cfg.cold_item_fraction * (n_items - 1)))
    held_out[np.random.default_rng([cfg.seed, 5]).permutation(n_items - 1)[:n_held] + 1] = True
    all_items = np.arange(1, n_items, dtype=np.int64)
    ctx = Context(cfg, part, held_out, None, Pool.of(all_items, n_items), cutoff)

    # Pass 2.
    per_event = 1 if part.labelled else 1 + cfg.negatives
    buckets = min(MAX_BUCKETS, max(1, math.ceil(part.events * per_event / cfg.bucket_samples)))
    totals = Totals.zeros(n_items, len(part.type_values) + 1 if part.type_source else 2)
    totals.counts.update(part.counts)
    writer = SampleWriter(tmp, buckets)
    with pa.ipc.open_stream(part.shards[0]) as reader:
        user_schema = pa.schema([("value", reader.schema.field("user").type), ("row", pa.int64())])
    user_vocab = pq.ParquetWriter(os.path.join(out_dir, layout.VOCAB_DIR, layout.USER_VOCAB), user_schema)
    processor = ShardProcessor(ctx, totals, writer, user_vocab)
    events = [processor.filter(k, path) for k, path in
              enumerate(tqdm(part.shards, desc="prepare 2/3 events", disable=not cfg.progress))]
    # Items with a row of their own in item_id's vocabulary (training count >= min_count).
    ctx.train_pool = Pool.of(np.flatnonzero(totals.train_events[1:] >= max(1, cfg.min_count)) + 1, n_items)
    for k, path in enumerate(tqdm(events, desc="prepare 2/3 samples", disable=not cfg.progress)):
        processor.samples(k, path)
    bucket_paths = writer.close()
    user_vocab.close()

    # Pass 3: the item side from the training counts, then the samples.
    side = _write_item_side(items, part, totals, cfg, out_dir)
    behavior_rows, behavior_labels, behavior_table = _behavior_vocab(part, totals)
    _write_vocab(out_dir, layout.BEHAVIOR_VOCAB, behavior_table)
    finish = lambda t: _finish(t, behavior_rows, totals.train_events)  # noqa: E731
    _write_samples(bucket_paths, os.path.join(out_dir, layout.split_file(layout.TRAIN)), cfg, True, finish)
    cold = {"candidates": 0, "positives": 0}

    def finish_test(t: pa.Table) -> pa.Table:
        out = finish(t)
        flags = out.column(layout.CANDIDATE_COLD).to_numpy()
        cold["candidates"] += int(flags.sum())
        cold["positives"] += int((flags & (out.column(layout.LABEL).to_numpy() == 1.0)).sum())
        return out

    _write_samples([writer.test_path], os.path.join(out_dir, layout.split_file(layout.TEST)), cfg, False, finish_test)
    shutil.rmtree(tmp)

    counts = totals.counts
    summary: Dict[str, Any] = {
        "events_read": counts["events_read"],
        "items": n_items - 1,
        "users": counts["users"],
        "train_samples": counts["train_samples"],
        "test_samples": counts["test_samples"],
        "test_cold_candidates": cold["candidates"],
        "test_cold_positives": cold["positives"],
        "unsorted_timestamps_sorted": counts["unsorted_timestamps_sorted"],
        "held_out_items": n_held,

        "item_id_vocab": side.features[0].vocab.size,
        "title_vocab": side.titles.vocab.size if side.titles is not None else 0,
        "behavior_types": len(behavior_labels),
        "dropped": {reason: counts[f"{reason}_dropped"] for reason in DROP_REASONS},
    }
    if not part.labelled:
        summary["training_negative_pool"] = len(ctx.train_pool.items)
    if side.word_vectors_found is not None:
        summary["word_vectors_found"] = side.word_vectors_found
    if cutoff is not None:
        summary["time_cutoff"] = cutoff
    summary["seconds"] = round(time.time() - t0, 1)
    manifest = {
        "format": layout.FORMAT,
        "prepare_version": layout.PREPARE_VERSION,
        "num_items": n_items,
        "num_users": processor.next_user_row,
        "id_features": [
            {"name": f.name, "num_embeddings": f.vocab.size, "multi_valued": f.multi_valued} for f in side.features
        ],
        "statistics": side.statistics,
        "statistic_buckets": list(cfg.statistic_buckets),
        "statistic_boundaries": side.boundaries,
        "title": None if side.titles is None else {
            "vocab_size": side.titles.vocab.size,
            "max_length": cfg.title_length,
            "vectors": layout.TITLE_VECTORS if side.word_vectors_found is not None else None,
        },
        "image_dim": info.image_shape[1] if info.image_shape else None,
        "num_behavior_types": len(behavior_labels),
        "behavior_types": behavior_labels,
        "behavior_source": part.type_source,
        "num_time_buckets": cfg.num_time_buckets,
        "max_length": cfg.max_length,
        "labelled": part.labelled,
        "splits": {layout.TRAIN: counts["train_samples"], layout.TEST: counts["test_samples"]},
        "summary": summary,
        "source": cfg.source or os.path.abspath(raw_dir),
        "protocol": _protocol(cfg, part, cutoff),
    }
    manifest_path = os.path.join(out_dir, layout.MANIFEST)
    with open(manifest_path + ".part", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".part", manifest_path)
    print(summary_line(out_dir, summary), flush=True)
    return summary


def _protocol(cfg: PrepareConfig, part: Partition, cutoff: Optional[int]) -> Dict[str, Any]:
    if cfg.split == "last":
        text = ("per user in time order: training predicts behaviour j+1 from the first j, the test "
                "sample predicts the last behaviour from all earlier ones")
    else:
        text = f"events at or after {cutoff} (quantile {1 - cfg.test_fraction:g} of timestamps) are the test period"
    text += ("; logged labels" if part.labelled else f"; {cfg.negatives} uniform negative(s) per positive")
    p = asdict(cfg)
    for key in ("progress", "source", "shard_events", "chunk_samples", "bucket_samples", "read_rows", "row_group_size"):
        p.pop(key)
    p["statistic_buckets"] = list(cfg.statistic_buckets)
    p["description"] = text
    return p


def summary_line(out_dir: str, s: Dict[str, Any]) -> str:
    dropped = ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items() if v) or "none"
    return (
        f"prepared {out_dir}: {s['events_read']:,} events, {s['users']:,} users, {s['items']:,} items; "
        f"samples train {s['train_samples']:,}, test {s['test_samples']:,} "
        f"({s['test_cold_candidates']:,} cold candidates); unsorted timestamps sorted "
        f"{s['unsorted_timestamps_sorted']:,}; held-out items {s['held_out_items']:,}; vocab item_id "
        f"{s['item_id_vocab']:,}, title {s['title_vocab']:,}, behaviour types {s['behavior_types']}; "
        f"dropped: {dropped}; {s['seconds']} s"
    )
