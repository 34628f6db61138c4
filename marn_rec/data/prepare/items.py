"""The item side of preparation: item rows, categorical vocabularies, title words, statistics.

Everything here is catalogue-sized (one entry per item, value or title word), never log-sized:
per-item counts of the training period come in from the sample pass as arrays over item rows.
Item row r (1..N) is the r-th row of the raw items.parquet; row 0 is the out-of-vocabulary item.
"""

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from marn_rec.data.prepare import layout
from marn_rec.data.schema import IMAGE_ROW, ITEM_ID, TITLE, DataError, RawDataset
from marn_rec.features import bucketize_statistic, quantile_boundaries

_STAT_NAME = re.compile(r"stat\d+_b\d+")
_NOT_WORD = r"[^\p{L}\p{N}]+"  # RE2: a run of characters that are not letters or digits
_TORCH_QUANTILE_LIMIT = 1 << 24


@dataclass
class RawItems:
    """The raw items.parquet: ``ids[r - 1]`` is the raw item_id of item row r."""

    table: pa.Table
    ids: pa.Array
    info: RawDataset

    @property
    def num_items(self) -> int:
        """Item rows including row 0."""
        return len(self.ids) + 1

    def rows_of(self, item_ids: pa.Array) -> np.ndarray:
        """Item row of each raw item_id (0 where it is not in items.parquet)."""
        ids = self.ids if self.ids.type == item_ids.type else self.ids.cast(item_ids.type)
        index = pc.index_in(item_ids, value_set=ids)
        return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def read_items(info: RawDataset) -> RawItems:
    table = pq.read_table(info.items_path)
    reserved = {layout.TITLE_WORDS}
    for name in table.column_names:
        if name in reserved or _STAT_NAME.fullmatch(name):
            raise DataError(
                info.items_path,
                "column name reserved by the prepared format (rename the column)",
                column=name,
            )
    return RawItems(table=table, ids=table.column(ITEM_ID).combine_chunks(), info=info)


# ---------------------------------------------------------------------------------------------
# Vocabularies


@dataclass
class Vocab:
    """Rows 1.. of a vocabulary: ``values[r - 1]`` has row r; ``counts`` its training count."""

    values: pa.Array
    counts: np.ndarray

    @property
    def size(self) -> int:
        """Rows including row 0."""
        return len(self.values) + 1

    def table(self) -> pa.Table:
        return pa.table(
            {
                "value": self.values,
                "row": pa.array(np.arange(1, self.size, dtype=np.int64)),
                "count": pa.array(self.counts.astype(np.int64)),
            }
        )


def _rank(dictionary: pa.Array, counts: np.ndarray, min_count: int) -> Tuple[np.ndarray, Vocab]:
    """Rows of a dictionary's values: by count descending, then value ascending (deterministic and
    independent of the input's order); values counted fewer than ``min_count`` times get row 0."""
    order = pc.sort_indices(
        pa.table({"c": pa.array(-counts), "v": dictionary}),
        sort_keys=[("c", "ascending"), ("v", "ascending")],
    ).to_numpy().astype(np.int64)
    order = order[counts[order] >= min_count]
    rows = np.zeros(len(dictionary), dtype=np.int64)
    rows[order] = np.arange(1, len(order) + 1)
    return rows, Vocab(values=dictionary.take(pa.array(order, pa.int64())), counts=counts[order])


@dataclass
class Encoded:
    """A categorical feature over item rows: ``values[offsets[r]:offsets[r + 1]]`` are item r's
    rows of the feature's table (one each for a single-valued feature)."""

    name: str
    multi_valued: bool
    offsets: np.ndarray  # int64 [num_items + 1]
    values: np.ndarray  # int64
    vocab: Vocab

    def arrow(self) -> pa.Array:
        if not self.multi_valued:
            return pa.array(self.values)
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.values))


def encode_feature(
    name: str, column: pa.Array, multi_valued: bool, item_events: np.ndarray, min_count: int
) -> Encoded:
    """Vocabulary and per-item rows of one categorical column (raw items order = item rows 1..N).

    A value's count is the training events of the items carrying it (``item_events`` over item
    rows). A null value (or a null list) is row 0; an empty list stays empty (the item has no
    value; the model's EmbeddingBag pools it to zeros).
    """
    n = len(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if multi_valued:
        flat = pc.list_flatten(column)
        parent = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        flat, parent = column, np.arange(n, dtype=np.int64)
    encoded = pc.dictionary_encode(flat)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = codes >= 0  # only single-valued columns have nulls here (schema forbids null elements)
    dictionary = encoded.dictionary
    counts = np.bincount(
        codes[valid], weights=item_events[1 + parent[valid]], minlength=len(dictionary)
    ).round().astype(np.int64)
    rows_of_code, vocab = _rank(dictionary, counts, min_count)
    element_rows = np.where(valid, rows_of_code[np.maximum(codes, 0)], 0)
    if not multi_valued:
        values = np.zeros(n + 1, dtype=np.int64)
        values[1:] = element_rows
        return Encoded(name, False, np.arange(n + 2, dtype=np.int64), values, vocab)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    is_null = np.isnan(lengths) if lengths.dtype.kind == "f" else np.zeros(n, dtype=bool)
    lengths = np.nan_to_num(lengths).astype(np.int64)
    # Item row 0 and null lists hold one value, row 0 (the contract's "null -> out of vocabulary").
    out_len = np.concatenate([[1], np.where(is_null, 1, lengths)])
    offsets = np.concatenate([[0], np.cumsum(out_len)])
    values = np.zeros(offsets[-1], dtype=np.int64)
    in_offsets = np.concatenate([[0], np.cumsum(lengths)])
    position = np.arange(len(parent)) - in_offsets[parent]
    values[offsets[1 + parent] + position] = element_rows
    return Encoded(name, True, offsets, values, vocab)


def categorical_features(items: RawItems, item_events: np.ndarray, min_count: int) -> List[Encoded]:
    """``item_id`` first, then the categorical columns in file order."""
    out = [encode_feature(ITEM_ID, items.ids, False, item_events, min_count)]
    for feature in items.info.id_features:
        out.append(
            encode_feature(
                feature.name, items.table.column(feature.name), feature.multi_valued, item_events, min_count
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Title words


@dataclass
class Titles:
    offsets: np.ndarray  # int64 [num_items + 1]: words of item r at values[offsets[r]:offsets[r+1]]
    values: np.ndarray  # int64 word rows
    vocab: Vocab  # counts: items whose (truncated) title holds the word

    def arrow(self) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.values))


def _words(column: pa.Array, text: bool, title_length: int) -> Tuple[np.ndarray, pa.Array]:
    """(item index, word) of every word kept, items in order: free text is lowercased and split on
    runs of characters that are not letters or digits (in Arrow, no Python string per word);
    empty tokens are dropped; each item keeps its first ``title_length`` words."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lists = pc.split_pattern_regex(pc.utf8_lower(column), pattern=_NOT_WORD) if text else column
    flat = pc.list_flatten(lists)
    item = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    nonempty = pc.greater(pc.utf8_length(flat), 0).to_numpy(zero_copy_only=False)
    flat, item = flat.filter(pa.array(nonempty)), item[nonempty]
    position = np.arange(len(item)) - np.searchsorted(item, item, side="left")
    keep = position < title_length
    return item[keep], flat.filter(pa.array(keep))


def tokenize(text: Optional[str]) -> List[str]:
    """The words of a title: lowercase, split on anything that is not a letter or digit."""
    return _words(pa.array([text], pa.string()), True, 1 << 30)[1].to_pylist()


def titles(items: RawItems, title_length: int) -> Optional[Titles]:
    """Title word rows of every item, or None without a title column. The vocabulary holds every
    word of the (truncated) titles of the catalogue (titles are item content, not events), by the
    number of items using it, descending, then alphabetically."""
    column = items.info.title_column
    if column is None:
        return None
    n = len(items.ids)
    item, words = _words(items.table.column(column), column == TITLE, title_length)
    encoded = pc.dictionary_encode(words)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    v = len(encoded.dictionary)
    pairs = np.unique(item * v + codes)  # an item counts once per word
    rows_of_code, vocab = _rank(encoded.dictionary, np.bincount(pairs % v, minlength=v), 1)
    lengths = np.r_[0, np.bincount(item, minlength=n)]
    return Titles(offsets=np.r_[0, np.cumsum(lengths)], values=rows_of_code[codes], vocab=vocab)


def word_vectors(path: str, vocab: Vocab, seed: int) -> Tuple[np.ndarray, int]:
    """[vocab.size, dim] float32 initial title-word vectors from a GloVe-format text file, and how
    many vocabulary words it had. Row 0 (padding) is zeros."""
    words = vocab.values.to_pylist()
    index = {w: i + 1 for i, w in enumerate(words)}
    matrix: Optional[np.ndarray] = None
    found = np.zeros(vocab.size, dtype=bool)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec text header "count dim"
            if matrix is None:
                dim = len(parts) - 1
                if dim < 1:
                    raise DataError(path, "expected 'word v1 v2 ...'", line=line_no)
                matrix = np.zeros((vocab.size, dim), dtype=np.float32)
            dim = matrix.shape[1]
            if len(parts) < dim + 1:
                raise DataError(path, f"{len(parts) - 1} numbers where the first line had {dim}", line=line_no)
            # Some GloVe files have words with spaces: the vector is the last `dim` fields.
            r = index.get(" ".join(parts[: len(parts) - dim]))
            if r is None or found[r]:
                continue
            try:
                matrix[r] = np.asarray(parts[len(parts) - dim :], dtype=np.float32)
            except ValueError as e:
                raise DataError(path, f"not a number ({e})", line=line_no) from e
            found[r] = True
    if matrix is None:
        raise DataError(path, "no vectors")
    missing = ~found
    missing[0] = False
    std = float(matrix[found].std()) if found.any() else 0.1
    rng = np.random.default_rng([seed, 7])
    matrix[missing] = rng.normal(0.0, std, size=(int(missing.sum()), matrix.shape[1]))
    return matrix, int(found.sum())


# ---------------------------------------------------------------------------------------------
# Statistics


def raw_statistics(items: RawItems, per_item: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Statistic name -> float64 [num_items] values (NaN = missing; row 0 missing): the given
    training-period statistics, then the item table's float columns."""
    out: Dict[str, np.ndarray] = {}
    for name, values in list(per_item.items()):
        v = values.astype(np.float64).copy()
        v[0] = math.nan
        out[name] = v
    for name in items.info.statistics:
        if name in out:
            raise DataError(items.info.items_path, "column name clashes with a computed statistic", column=name)
        col = items.table.column(name).cast(pa.float64())
        out[name] = np.concatenate([[math.nan], pc.fill_null(col, math.nan).to_numpy(zero_copy_only=False)])
    return out


def discretise(values: np.ndarray, training_items: np.ndarray, buckets: int) -> Tuple[np.ndarray, List[float]]:
    """Bucket of every item and the boundaries: bucket 0 = missing (NaN), buckets 1..b-1 equal
    frequency over the non-missing values of the ``training_items``:
    ``1 + bucketize_statistic(v, quantile_boundaries(fit, b - 1))``, the model code's functions.
    (numpy's identical linear quantiles past torch.quantile's 2**24-value limit.)"""
    fit = torch.from_numpy(values[training_items & ~np.isnan(values)])
    if fit.numel() > _TORCH_QUANTILE_LIMIT:
        q = torch.linspace(0, 1, buckets, dtype=torch.float64)[1:-1].numpy()
        boundaries = torch.from_numpy(np.quantile(fit.numpy(), q, method="linear"))
    elif fit.numel():
        boundaries = quantile_boundaries(fit, buckets - 1)
    else:
        boundaries = torch.zeros(0, dtype=torch.float64)
    v = torch.from_numpy(values)
    b = torch.where(v.isnan(), 0, 1 + bucketize_statistic(v.nan_to_num(), boundaries))
    return b.numpy().astype(np.int64), boundaries.tolist()


# ---------------------------------------------------------------------------------------------
# Output


def image_rows(items: RawItems) -> np.ndarray:
    """int64 [num_items]: row of each item in image_vectors.npy, -1 = no image."""
    out = np.full(items.num_items, -1, dtype=np.int64)
    if IMAGE_ROW in items.table.column_names:
        out[1:] = pc.fill_null(items.table.column(IMAGE_ROW), -1).to_numpy(zero_copy_only=False)
    return out


def item_table(
    features: Sequence[Encoded],
    statistic_buckets: Dict[str, np.ndarray],
    title: Optional[Titles],
    image_row: np.ndarray,
) -> pa.Table:
    """items.parquet: id features, statistic buckets, title_words, image_row (row 0 = OOV item)."""
    n = len(image_row)
    columns: Dict[str, pa.Array] = {f.name: f.arrow() for f in features}
    for name, b in statistic_buckets.items():
        columns[name] = pa.array(b)
    if title is None:
        columns[layout.TITLE_WORDS] = pa.ListArray.from_arrays(
            pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.int64())
        )
    else:
        columns[layout.TITLE_WORDS] = title.arrow()
    columns[layout.IMAGE_ROW] = pa.array(image_row)
    return pa.table(columns)
