"""The user format ("raw" directory) as code: file and column names, allowed Arrow types, and
:func:`validate_raw`, which checks a raw directory and describes it.

A raw directory is what a user with their own logs writes, and what the converters of published
data sets (:mod:`marn_rec.data.sources`) produce; preparation (``marn_rec.data.prepare``) reads it.
The format is documented in ``docs/data_format.md``:

- ``items.parquet``: one row per item. ``item_id`` (string or int64, unique, non-null); optional
  ``title`` (string) or ``title_tokens`` (list<string>); every other string / int64 / int32 /
  list<string> / list<int64> column is a categorical ID feature (nulls -> out-of-vocabulary);
  every float32 / float64 column is a numeric statistic (null = missing, NaN/inf = bad data);
  optional ``image_row`` (int64, row in ``image_vectors.npy``, null = no image).
- ``image_vectors.npy``: float32 [K, D], present iff ``image_row`` is.
- ``interactions.parquet``: one row per event. ``user_id`` (string or int64), ``item_id`` (same
  type as the items'), ``timestamp`` (int64 unix seconds); optional ``behavior`` (string or int),
  ``rating`` (float), ``label`` (float 0/1).

Bad data raises :class:`DataError` (a ``ValueError``) naming the file, the column and the first
offending row (0-based). The interactions file is read in record batches, never whole.
"""

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marn_rec.data.columns import (
    first_duplicate,
    first_non_finite,
    first_null,
    first_null_element,
    first_true,
)

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
IMAGE_VECTORS_FILE = "image_vectors.npy"

# items.parquet
ITEM_ID = "item_id"
TITLE = "title"
TITLE_TOKENS = "title_tokens"
IMAGE_ROW = "image_row"
# interactions.parquet
USER_ID = "user_id"
TIMESTAMP = "timestamp"
BEHAVIOR = "behavior"
RATING = "rating"
LABEL = "label"

REQUIRED_ITEM_COLUMNS = (ITEM_ID,)
REQUIRED_INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)
OPTIONAL_INTERACTION_COLUMNS = (BEHAVIOR, RATING, LABEL)
# Conventional names of the item's categorical features (any other name works as well).
CONVENTIONAL_ID_FEATURES = ("shop_id", "brand_id", "category_id")

# A timestamp above this (year 5138 in seconds) is almost surely in milliseconds or microseconds.
MAX_TIMESTAMP_SECONDS = 10**11

# Rows per record batch when streaming interactions.parquet.
BATCH_ROWS = 1 << 20


class DataError(ValueError):
    """Bad input data. The message names the file and, where they apply, the column and the first
    offending row (0-based, in parquet files), line (1-based, in text files) or record (0-based, in
    binary files); the same are kept as attributes."""

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        column: Optional[str] = None,
        row: Optional[int] = None,
        line: Optional[int] = None,
        record: Optional[int] = None,
    ) -> None:
        self.file, self.problem = str(file), problem
        self.column, self.row, self.line, self.record = column, row, line, record
        where = [self.file]
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record} (0-based)")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row} (0-based)")
        super().__init__(f"{', '.join(where)}: {problem}")

    def __reduce__(self) -> Any:
        # Keyword-only arguments would be lost by the default pickling of exceptions (which replays
        # self.args); DataLoader workers and multiprocessing pickle exceptions to re-raise them.
        kw = dict(column=self.column, row=self.row, line=self.line, record=self.record)
        return (_rebuild_data_error, (self.file, self.problem, kw))


def _rebuild_data_error(file: str, problem: str, kw: Dict[str, Any]) -> DataError:
    return DataError(file, problem, **kw)


# ---------------------------------------------------------------------------------------------
# Types. "string" also admits large_string and "list" also large_list: writers such as polars
# produce the large variants; the values are the same.


def is_string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def id_type_kind(t: pa.DataType) -> Optional[str]:
    """"string" or "int64" for an allowed ``item_id`` / ``user_id`` type, else None."""
    if is_string_type(t):
        return "string"
    if pa.types.is_int64(t):
        return "int64"
    return None


def categorical_type_kind(t: pa.DataType) -> Optional[str]:
    """"string", "int", "list<string>" or "list<int64>" for a categorical feature type, else None."""
    if is_string_type(t):
        return "string"
    if pa.types.is_int64(t) or pa.types.is_int32(t):
        return "int"
    if is_list_type(t):
        v = t.value_type
        if is_string_type(v):
            return "list<string>"
        if pa.types.is_int64(v):
            return "list<int64>"
    return None


def is_float_type(t: pa.DataType) -> bool:
    return pa.types.is_float32(t) or pa.types.is_float64(t)


# ---------------------------------------------------------------------------------------------
# The description validate_raw returns.


@dataclass(frozen=True)
class IdFeature:
    """A categorical ID feature of the item (one embedding table): a column of items.parquet."""

    name: str
    kind: str  # "string", "int", "list<string>" or "list<int64>"

    @property
    def multi_valued(self) -> bool:
        return self.kind.startswith("list")


@dataclass(frozen=True)
class RawDataset:
    """What :func:`validate_raw` found in a valid raw directory."""

    root: str
    items_path: str
    interactions_path: str
    image_vectors_path: Optional[str]
    num_items: int
    num_interactions: int
    item_id_kind: str  # "string" or "int64"
    user_id_kind: str  # "string" or "int64"
    title_column: Optional[str]  # "title", "title_tokens" or None
    id_features: Tuple[IdFeature, ...]  # categorical item columns other than item_id
    statistics: Tuple[str, ...]  # float item columns, in file order
    image_shape: Optional[Tuple[int, int]]  # (K, D) of image_vectors.npy
    interaction_columns: Tuple[str, ...]  # optional columns present: behavior, rating, label
    behavior_kind: Optional[str]  # "string" or "int" when behavior is present
    timestamp_range: Tuple[int, int]
    # Interactions whose item_id is not in items.parquet (only with unknown_items="count").
    num_unknown_item_interactions: int = 0
    first_unknown_item_row: Optional[int] = None
    # Columns of interactions.parquet that the format does not use.
    ignored_columns: Tuple[str, ...] = ()

    @property
    def has_image(self) -> bool:
        return self.image_shape is not None


def _type_error(path: str, column: str, t: pa.DataType, allowed: str) -> DataError:
    return DataError(path, f"type {t} not allowed: {allowed}", column=column)


def _read_schema(path: str) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(path, f"not a readable parquet file ({e})") from e


def _require_file(root: str, name: str) -> str:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise DataError(path, "missing: a raw directory holds items.parquet and interactions.parquet")
    return path


# ---------------------------------------------------------------------------------------------
# items.parquet and image_vectors.npy


def _check_item_columns(path: str, schema: pa.Schema) -> Tuple[Optional[str], List[IdFeature], List[str]]:
    """Classifies the item columns by type; raises on a missing or mistyped column."""
    names = schema.names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(path, "column appears twice", column=dup)
    if ITEM_ID not in names:
        raise DataError(path, "required column missing", column=ITEM_ID)
    if id_type_kind(schema.field(ITEM_ID).type) is None:
        raise _type_error(path, ITEM_ID, schema.field(ITEM_ID).type, "string or int64")
    if TITLE in names and TITLE_TOKENS in names:
        raise DataError(path, "both 'title' and 'title_tokens': give the title one way", column=TITLE_TOKENS)
    title_column, id_features, statistics = None, [], []
    for f in schema:
        t = f.type
        if f.name == ITEM_ID:
            continue
        if f.name == TITLE:
            if not is_string_type(t):
                raise _type_error(path, TITLE, t, "string (list<string> goes in 'title_tokens')")
            title_column = TITLE
        elif f.name == TITLE_TOKENS:
            if not (is_list_type(t) and is_string_type(t.value_type)):
                raise _type_error(path, TITLE_TOKENS, t, "list<string>")
            title_column = TITLE_TOKENS
        elif f.name == IMAGE_ROW:
            if not pa.types.is_int64(t):
                raise _type_error(path, IMAGE_ROW, t, "int64 (row of image_vectors.npy)")
        elif is_float_type(t):
            statistics.append(f.name)
        elif categorical_type_kind(t) is not None:
            id_features.append(IdFeature(f.name, categorical_type_kind(t)))
        else:
            raise _type_error(
                path, f.name, t,
                "a categorical feature is string, int64, int32, list<string> or list<int64>; "
                "a numeric statistic is float32 or float64",
            )
    return title_column, id_features, statistics


def _check_image_vectors(path: str) -> Tuple[int, int]:
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(path, f"not a readable .npy file ({e})") from e
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise DataError(path, f"expected a float32 [K, D] array, found {vectors.dtype} {list(vectors.shape)}")
    # In blocks: the file may be larger than memory.
    block = max(1, (64 << 20) // max(1, vectors.shape[1] * 4))
    for start in range(0, vectors.shape[0], block):
        bad = ~np.isfinite(vectors[start : start + block]).all(axis=1)
        if bad.any():
            raise DataError(path, "NaN or inf in the image vector", row=start + int(np.argmax(bad)))
    return int(vectors.shape[0]), int(vectors.shape[1])


def _check_items(path: str, root: str) -> Tuple[pa.Array, Dict[str, Any]]:
    schema = _read_schema(path)
    title_column, id_features, statistics = _check_item_columns(path, schema)
    table = pq.read_table(path)
    if table.num_rows == 0:
        raise DataError(path, "no items")
    ids = table.column(ITEM_ID).combine_chunks()
    if (r := first_null(ids)) is not None:
        raise DataError(path, "null item_id", column=ITEM_ID, row=r)
    if (dup := first_duplicate(ids)) is not None:
        raise DataError(path, f"duplicate item_id {dup[1]!r}", column=ITEM_ID, row=dup[0])
    for name in statistics:
        if (r := first_non_finite(table.column(name))) is not None:
            raise DataError(path, "NaN or inf (use null for a missing value)", column=name, row=r)
    for feature in id_features:
        if feature.multi_valued and (r := first_null_element(table.column(feature.name))) is not None:
            raise DataError(path, "null inside a list (a null list is allowed)", column=feature.name, row=r)
    if title_column == TITLE_TOKENS and (r := first_null_element(table.column(TITLE_TOKENS))) is not None:
        raise DataError(path, "null inside a list (a null list is allowed)", column=TITLE_TOKENS, row=r)

    image_path = os.path.join(root, IMAGE_VECTORS_FILE)
    image_shape = None
    if IMAGE_ROW in schema.names:
        if not os.path.isfile(image_path):
            raise DataError(image_path, "missing, but items.parquet has an image_row column")
        image_shape = _check_image_vectors(image_path)
        rows = table.column(IMAGE_ROW)
        out_of_range = pc.or_(pc.less(rows, 0), pc.greater_equal(rows, image_shape[0]))
        if (r := first_true(out_of_range)) is not None:
            raise DataError(
                path,
                f"image_row {table.column(IMAGE_ROW)[r].as_py()} outside image_vectors.npy's "
                f"{image_shape[0]} rows",
                column=IMAGE_ROW,
                row=r,
            )
    elif os.path.exists(image_path):
        raise DataError(image_path, "present, but items.parquet has no image_row column to index it")
    info = dict(
        items_path=path,
        image_vectors_path=image_path if image_shape else None,
        num_items=table.num_rows,
        item_id_kind=id_type_kind(schema.field(ITEM_ID).type),
        title_column=title_column,
        id_features=tuple(id_features),
        statistics=tuple(statistics),
        image_shape=image_shape,
    )
    return ids, info


# ---------------------------------------------------------------------------------------------
# interactions.parquet


def _check_interaction_columns(path: str, schema: pa.Schema, item_id_kind: str) -> Dict[str, Any]:
    names = schema.names
    for name in REQUIRED_INTERACTION_COLUMNS:
        if name not in names:
            raise DataError(path, "required column missing", column=name)
    user_kind = id_type_kind(schema.field(USER_ID).type)
    if user_kind is None:
        raise _type_error(path, USER_ID, schema.field(USER_ID).type, "string or int64")
    if id_type_kind(schema.field(ITEM_ID).type) != item_id_kind:
        raise DataError(
            path,
            f"type {schema.field(ITEM_ID).type} differs from items.parquet's item_id ({item_id_kind})",
            column=ITEM_ID,
        )
    if not pa.types.is_int64(schema.field(TIMESTAMP).type):
        raise _type_error(path, TIMESTAMP, schema.field(TIMESTAMP).type, "int64 unix seconds")
    behavior_kind = None
    if BEHAVIOR in names:
        t = schema.field(BEHAVIOR).type
        if is_string_type(t):
            behavior_kind = "string"
        elif pa.types.is_int64(t) or pa.types.is_int32(t):
            behavior_kind = "int"
        else:
            raise _type_error(path, BEHAVIOR, t, "string, int64 or int32")
    for name in (RATING, LABEL):
        if name in names and not is_float_type(schema.field(name).type):
            raise _type_error(path, name, schema.field(name).type, "float32 or float64")
    known = set(REQUIRED_INTERACTION_COLUMNS) | set(OPTIONAL_INTERACTION_COLUMNS)
    return dict(
        user_id_kind=user_kind,
        behavior_kind=behavior_kind,
        interaction_columns=tuple(n for n in OPTIONAL_INTERACTION_COLUMNS if n in names),
        ignored_columns=tuple(n for n in names if n not in known),
    )


def iter_interaction_batches(
    path: str, columns: Optional[List[str]] = None, batch_rows: int = BATCH_ROWS
) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """Yields (first row, record batch) over a parquet file without reading it whole."""
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield start, batch
        start += batch.num_rows


def _check_interactions(
    path: str, item_ids: pa.Array, item_id_kind: str, unknown_items: str, batch_rows: int
) -> Dict[str, Any]:
    schema = _read_schema(path)
    info = _check_interaction_columns(path, schema, item_id_kind)
    columns = list(REQUIRED_INTERACTION_COLUMNS) + list(info["interaction_columns"])
    # is_in needs the value set in the column's own type (string vs large_string).
    item_ids = item_ids.cast(schema.field(ITEM_ID).type)
    n, unknown, first_unknown = 0, 0, None
    t_min, t_max = math.inf, -math.inf
    for start, batch in iter_interaction_batches(path, columns, batch_rows):
        n += batch.num_rows
        for name in REQUIRED_INTERACTION_COLUMNS:
            if (r := first_null(batch.column(name))) is not None:
                raise DataError(path, f"null {name}", column=name, row=start + r)
        ts = batch.column(TIMESTAMP)
        if (r := first_true(pc.greater(ts, MAX_TIMESTAMP_SECONDS))) is not None:
            raise DataError(
                path,
                f"timestamp {ts[r].as_py()} is past the year 5000: unix seconds expected (milliseconds?)",
                column=TIMESTAMP,
                row=start + r,
            )
        if batch.num_rows:
            mm = pc.min_max(ts)
            t_min, t_max = min(t_min, mm["min"].as_py()), max(t_max, mm["max"].as_py())
        if RATING in info["interaction_columns"]:
            if (r := first_non_finite(batch.column(RATING))) is not None:
                raise DataError(
                    path, "NaN or inf (use null for a missing rating)", column=RATING, row=start + r
                )
        if LABEL in info["interaction_columns"]:
            label = batch.column(LABEL)
            bad = pc.invert(pc.is_in(label, value_set=pa.array([0.0, 1.0], label.type)))
            if (r := first_true(pc.or_kleene(bad, pc.is_null(label)))) is not None:
                raise DataError(
                    path, f"label {label[r].as_py()!r}: 0 or 1 expected", column=LABEL, row=start + r
                )
        missing = pc.invert(pc.is_in(batch.column(ITEM_ID), value_set=item_ids))
        if (r := first_true(missing)) is not None:
            if unknown_items == "error":
                raise DataError(
                    path,
                    f"item_id {batch.column(ITEM_ID)[r].as_py()!r} is not in items.parquet",
                    column=ITEM_ID,
                    row=start + r,
                )
            first_unknown = start + r if first_unknown is None else first_unknown
            unknown += int(pc.sum(missing).as_py())
    if n == 0:
        raise DataError(path, "no interactions")
    info.update(
        interactions_path=path,
        num_interactions=n,
        timestamp_range=(int(t_min), int(t_max)),
        num_unknown_item_interactions=unknown,
        first_unknown_item_row=first_unknown,
    )
    return info


def validate_raw(raw_dir: str, unknown_items: str = "error", batch_rows: int = BATCH_ROWS) -> RawDataset:
    """Checks a raw directory against the user format and describes it.

    Args:
        raw_dir: holds items.parquet, interactions.parquet and, with image_row, image_vectors.npy.
        unknown_items: "error": an interaction whose item_id is not in items.parquet is bad data;
            "count": such interactions are counted (``num_unknown_item_interactions``) for the
            caller to drop.
        batch_rows: rows per record batch when streaming interactions.parquet.

    Returns:
        RawDataset: the column roles, sizes and types found.

    Raises:
        DataError: the first problem found, naming the file, column and row.
    """
    if unknown_items not in ("error", "count"):
        raise ValueError(f"unknown_items must be 'error' or 'count', not {unknown_items!r}")
    if not os.path.isdir(raw_dir):
        raise DataError(raw_dir, "not a directory")
    items_path = _require_file(raw_dir, ITEMS_FILE)
    interactions_path = _require_file(raw_dir, INTERACTIONS_FILE)
    item_ids, items_info = _check_items(items_path, raw_dir)
    inter_info = _check_interactions(
        interactions_path, item_ids, items_info["item_id_kind"], unknown_items, batch_rows
    )
    return RawDataset(root=raw_dir, **items_info, **inter_info)
