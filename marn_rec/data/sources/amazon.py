"""Amazon 2014 (McAuley et al.; the data of DIN and of the MARN paper) as published, converted to the
user format (``docs/data_format.md``) in a stream.

The three published files of a category:

- ``reviews_<Category>_5.json``: JSON lines (``reviewerID``, ``asin``, ``overall``,
  ``unixReviewTime``, and text fields that are not used).
- ``meta_<Category>.json``: one Python literal per line, single-quoted (``asin``, optional ``title``,
  ``price``, ``imUrl``, ``brand``, ``related``, ``salesRank`` {category: rank}, ``categories``
  [[path...], ...]); parsed with ``ast.literal_eval``, never ``eval``.
- ``image_features_<Category>.b``: flat records of 10 ASCII bytes of ASIN then 4096 little-endian
  float32 (~8 GB for Electronics, with ASINs absent from the other files).

Nothing is loaded whole: reviews are written to parquet in chunks, meta is read line by line (only
the lines of reviewed items are parsed), and the image file is memory-mapped: its ASIN fields are
scanned block by block and only the needed vectors are copied into ``image_vectors.npy``.

What becomes what:

- interactions: ``user_id`` = reviewerID, ``item_id`` = asin, ``timestamp`` = unixReviewTime,
  ``rating`` = overall.
- items (the reviewed items that have a meta line, in meta order): ``item_id`` = asin, ``title``,
  ``brand_id`` = brand, ``category_id`` = the leaf of the last category path (DIN's
  ``categories[-1][-1]``; ``category_path`` chooses another path), ``categories`` = the leaves of
  all paths, ``price``, ``sales_rank`` (the first entry of salesRank), ``image_row``.

Missing title, brand, price, sales rank or image are normal (null). Bad data (a malformed line, a
truncated last image record, NaN in an image vector, a duplicate meta line, a review of an ASIN
without a meta line) raises a :class:`~marn_rec.data.schema.DataError` naming the file and line or
record, or with ``errors="drop"`` is dropped and counted in the returned summary.
"""

import ast
import json
import math
import os
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from marn_rec.data.schema import (
    IMAGE_VECTORS_FILE,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    MAX_TIMESTAMP_SECONDS,
    DataError,
    validate_raw,
)
from marn_rec.data.sources.common import (
    BadData,
    ChunkedParquetWriter,
    ConversionSummary,
    OutputFiles,
    Timer,
    finish,
    iter_lines,
)

IMAGE_DIM = 4096
ASIN_BYTES = 10

INTERACTION_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float32())]
)
# The reviews as first written, with their line numbers: reviews of ASINs without a meta line are
# only known after the meta pass, and an error must still name the review's line.
_REVIEWS_SCHEMA = INTERACTION_SCHEMA.append(pa.field("_line", pa.int64()))
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("brand_id", pa.string()),
        ("category_id", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("price", pa.float64()),
        ("sales_rank", pa.float64()),
    ]
)

# The published meta lines start with the ASIN: `{'asin': '0000031852', ...`. Reading it from the
# prefix skips the (slow) literal_eval of the ~90% of Electronics meta lines nobody reviewed. A line
# that does not start this way is parsed in full, so the shortcut never changes the result.
_META_ASIN_PREFIX = re.compile(rb"""\s*\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]*)\2""")


def _short(x: Any, limit: int = 80) -> str:
    """repr for an error message, cut to ``limit`` characters."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# reviews


def _review_problem(r: Any) -> Optional[str]:
    if not isinstance(r, dict):
        return f"a JSON object expected, found {type(r).__name__}"
    for key in ("reviewerID", "asin"):
        if not isinstance(r.get(key), str) or not r[key]:
            return f"field {key!r} is missing or not a non-empty string"
    if not _is_number(r.get("overall")):
        return f"field 'overall' is missing or not a finite number: {_short(r.get('overall'))}"
    t = r.get("unixReviewTime")
    if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= MAX_TIMESTAMP_SECONDS:
        return f"field 'unixReviewTime' is missing or not unix seconds: {_short(t)}"
    return None


def _read_reviews(
    path: str, writer: ChunkedParquetWriter, bad: BadData, progress: bool
) -> Tuple[Set[str], int]:
    """Writes the reviews with their line numbers; returns the reviewed ASINs and the blank lines."""
    asins: Set[str] = set()
    blank = 0
    for number, raw in iter_lines(path, "reviews", progress):
        if not raw.strip():
            blank += 1
            continue
        try:
            r = json.loads(raw)
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError
            bad("malformed_review", DataError(path, f"not JSON ({e})", line=number))
            continue
        problem = _review_problem(r)
        if problem:
            bad("malformed_review", DataError(path, problem, line=number))
            continue
        writer.append((r["reviewerID"], r["asin"], r["unixReviewTime"], float(r["overall"]), number))
        asins.add(r["asin"])
    return asins, blank


# ---------------------------------------------------------------------------------------------
# meta


def _optional_str(d: Dict[str, Any], key: str) -> Tuple[Optional[str], Optional[str]]:
    """(value or None, problem or None); empty strings count as missing."""
    v = d.get(key)
    if v is None:
        return None, None
    if not isinstance(v, str):
        return None, f"field {key!r} is not a string: {_short(v)}"
    return (v.strip() or None), None


def _item_row(d: Dict[str, Any], category_path: int) -> Tuple[Optional[tuple], Optional[str]]:
    """The items.parquet row of a parsed meta line, or the problem with it."""
    title, problem = _optional_str(d, "title")
    if problem:
        return None, problem
    brand, problem = _optional_str(d, "brand")
    if problem:
        return None, problem
    price = d.get("price")
    if price is not None and not _is_number(price):
        return None, f"field 'price' is not a finite number: {_short(price)}"
    ranks = d.get("salesRank")
    sales_rank = None
    if ranks is not None:
        if not isinstance(ranks, dict) or not all(_is_number(v) for v in ranks.values()):
            return None, f"field 'salesRank' is not a {{category: rank}} dict: {_short(ranks)}"
        # Nearly always one entry; with several, the first one as written.
        sales_rank = float(next(iter(ranks.values()))) if ranks else None
    paths = d.get("categories")
    if paths is None:
        paths = []
    if not isinstance(paths, list) or not all(
        isinstance(p, list) and all(isinstance(c, str) for c in p) for p in paths
    ):
        return None, f"field 'categories' is not a list of category paths: {_short(paths)}"
    leaves: List[str] = []
    for p in paths:
        if p and p[-1] not in leaves:
            leaves.append(p[-1])
    try:
        chosen = paths[category_path] if paths else []
    except IndexError:  # fewer paths than category_path asks for: the last one
        chosen = paths[-1]
    category = chosen[-1] if chosen else None
    row = (d["asin"], title, brand, category, leaves, None if price is None else float(price), sales_rank)
    return row, None


def _read_meta(
    path: str, reviewed: Set[str], bad: BadData, category_path: int, progress: bool, skipped: Counter
) -> Dict[str, tuple]:
    """Items rows of the reviewed ASINs, keyed by ASIN, in meta order."""
    items: Dict[str, tuple] = {}
    for number, raw in iter_lines(path, "meta", progress):
        if not raw.strip():
            skipped["blank_meta_lines"] += 1
            continue
        m = _META_ASIN_PREFIX.match(raw)
        if m is not None and m.group(3).decode("utf-8", "replace") not in reviewed:
            skipped["meta_without_reviews"] += 1
            continue
        try:
            d = ast.literal_eval(raw.decode("utf-8"))
        # TypeError: an unhashable dict key; RecursionError / MemoryError: absurd nesting.
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            problem = f"not a Python literal ({type(e).__name__}: {e})"
            bad("malformed_meta", DataError(path, problem, line=number))
            continue
        if not isinstance(d, dict) or not isinstance(d.get("asin"), str) or not d["asin"]:
            problem = "a dict with a non-empty string 'asin' expected"
            bad("malformed_meta", DataError(path, problem, line=number))
            continue
        if d["asin"] not in reviewed:
            skipped["meta_without_reviews"] += 1
            continue
        if d["asin"] in items:
            bad("duplicate_meta", DataError(path, f"second meta line of ASIN {d['asin']!r}", line=number))
            continue
        row, problem = _item_row(d, category_path)
        if problem:
            bad("malformed_meta", DataError(path, problem, line=number))
            continue
        items[d["asin"]] = row
    return items


# ---------------------------------------------------------------------------------------------
# image features


def _read_images(
    path: str,
    items: Dict[str, tuple],
    out_path: str,
    bad: BadData,
    image_dim: int,
    progress: bool,
    skipped: Counter,
) -> Dict[str, int]:
    """Copies the vectors of ``items`` into a new ``out_path`` .npy; returns ASIN -> image row.

    Two passes with plain reads into bounded buffers (not a memory map of the input, whose touched
    pages would all count as this process's memory): the first reads the file block by block and
    keeps the record numbers of wanted ASINs, the second reads just those records.
    """
    record = ASIN_BYTES + 4 * image_dim
    size = os.path.getsize(path)
    n, rest = divmod(size, record)
    if rest:
        bad(
            "truncated_image_record",
            DataError(path, f"the last record has {rest} bytes, {record} expected (truncated?)", record=n),
        )
    dtype = np.dtype([("asin", f"S{ASIN_BYTES}"), ("vector", "<f4", (image_dim,))])
    # Only ASINs that fit the 10-byte field can be in the file.
    wanted = np.array(
        [a.encode("ascii") for a in items if a.isascii() and len(a) <= ASIN_BYTES], dtype=f"S{ASIN_BYTES}"
    )
    first: Dict[bytes, int] = {}  # ASIN -> first record holding it
    block = max(1, (32 << 20) // record)  # records per read: ~32 MB
    buffer = np.empty(block, dtype)
    with open(path, "rb") as f, tqdm(
        total=n * record, unit="B", unit_scale=True, desc="image features (scan)", disable=not progress
    ) as bar:
        for start in range(0, n, block):
            count = min(block, n - start)
            f.readinto(memoryview(buffer[:count]).cast("B"))
            asins = buffer["asin"][:count]
            for j in np.nonzero(np.isin(asins, wanted))[0]:
                if asins[j] in first:
                    skipped["image_duplicate_records"] += 1
                else:
                    first[bytes(asins[j])] = start + int(j)
            bar.update(count * record)
    skipped["image_records_unused"] += n - len(first) - skipped["image_duplicate_records"]

    chosen = sorted(first.values())  # file order: the second pass reads forward
    vectors = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(len(chosen), image_dim))
    rows: Dict[str, int] = {}
    with open(path, "rb") as f, tqdm(
        total=len(chosen) * record, unit="B", unit_scale=True, desc="image features (copy)",
        disable=not progress,
    ) as bar:
        for start in range(0, len(chosen), block):
            index = chosen[start : start + block]
            for j, r in enumerate(index):
                f.seek(r * record)
                f.readinto(memoryview(buffer[j : j + 1]).cast("B"))
            v = buffer["vector"][: len(index)].astype(np.float32)  # little-endian -> native
            finite = np.isfinite(v).all(axis=1)
            for j, r in enumerate(index):
                asin = buffer["asin"][j].decode("ascii")
                if not finite[j]:
                    problem = f"NaN or inf in the vector of ASIN {asin!r}"
                    bad("non_finite_image", DataError(path, problem, record=r))
                    v[j] = 0.0  # the row stays, unreferenced
                    continue
                rows[asin] = start + j
            vectors[start : start + len(index)] = v
            vectors.flush()  # written back block by block: the pages can be reclaimed
            bar.update(len(index) * record)
    del vectors
    return rows


# ---------------------------------------------------------------------------------------------
# the conversion


def _write_interactions(
    tmp_path: str,
    out_path: str,
    reviews: str,
    meta: str,
    items: Dict[str, tuple],
    bad: BadData,
    chunk_rows: int,
) -> Tuple[int, int]:
    """Copies the reviews whose ASIN has an item row; returns (interactions, users)."""
    known = pa.array(list(items), pa.string())
    writer = ChunkedParquetWriter(out_path, INTERACTION_SCHEMA, chunk_rows)
    users: Set[str] = set()
    for batch in pq.ParquetFile(tmp_path).iter_batches(batch_size=chunk_rows):
        ok = pc.is_in(batch.column("item_id"), value_set=known)
        missing = len(ok) - pc.sum(ok).as_py() if len(ok) else 0
        if missing:
            j = pc.index(ok, False).as_py()
            error = DataError(
                reviews,
                f"review of ASIN {batch.column('item_id')[j].as_py()!r}, which has no usable line in {meta}",
                line=batch.column("_line")[j].as_py(),
            )
            bad("review_without_meta", error, count=missing)
            batch = batch.filter(ok)
        batch = batch.select(INTERACTION_SCHEMA.names)
        writer.write_batch(batch)
        users.update(pc.unique(batch.column("user_id")).to_pylist())
    writer.close()
    return writer.num_rows, len(users)


def convert_amazon(
    reviews: str,
    meta: str,
    out_dir: str,
    image_features: Optional[str] = None,
    *,
    errors: str = "raise",
    category_path: int = -1,
    image_dim: int = IMAGE_DIM,
    chunk_rows: int = 500_000,
    progress: bool = True,
    verbose: bool = True,
    validate: bool = True,
) -> ConversionSummary:
    """Converts one Amazon 2014 category to a raw directory (items.parquet, interactions.parquet and,
    with ``image_features``, image_vectors.npy).

    Args:
        reviews: ``reviews_<Category>_5.json``.
        meta: ``meta_<Category>.json``.
        out_dir: the raw directory (created; the files it gets are replaced only on success).
        image_features: ``image_features_<Category>.b``, or None for no image modality.
        errors: "raise" (a DataError naming the file and line / record) or "drop" (counted).
        category_path: which category path gives ``category_id`` (its leaf): -1 = the last, as
            DIN (``categories[-1][-1]``); 0 = the first.
        image_dim: floats per image record.
        chunk_rows: rows per parquet row group / per block held in memory.
        progress: tqdm bars (in bytes) over the files.
        verbose: print the summary line.
        validate: check the result with :func:`~marn_rec.data.schema.validate_raw`.

    Returns:
        ConversionSummary: counts written, dropped (by reason) and skipped.
    """
    timer, bad, skipped = Timer(), BadData(errors), Counter()
    names = [ITEMS_FILE, INTERACTIONS_FILE] + ([IMAGE_VECTORS_FILE] if image_features else [])
    stale = [] if image_features else [IMAGE_VECTORS_FILE]
    with OutputFiles(out_dir, names, stale) as out:
        tmp = out.scratch("reviews.parquet")
        review_writer = ChunkedParquetWriter(tmp, _REVIEWS_SCHEMA, chunk_rows)
        reviewed, blank = _read_reviews(reviews, review_writer, bad, progress)
        review_writer.close()
        if blank:
            skipped["blank_review_lines"] = blank
        items = _read_meta(meta, reviewed, bad, category_path, progress, skipped)
        if not items:
            raise DataError(meta, "no meta line matches a review: is this the same category's meta file?")
        image_rows: Dict[str, int] = {}
        if image_features:
            image_rows = _read_images(
                image_features, items, out.partial(IMAGE_VECTORS_FILE), bad, image_dim, progress, skipped
            )
        table = pa.Table.from_pylist(
            [dict(zip(ITEM_SCHEMA.names, row)) for row in items.values()], schema=ITEM_SCHEMA
        )
        if image_features:
            table = table.append_column(
                pa.field("image_row", pa.int64()), pa.array([image_rows.get(a) for a in items], pa.int64())
            )
        pq.write_table(table, out.partial(ITEMS_FILE))
        num_interactions, num_users = _write_interactions(
            tmp, out.partial(INTERACTIONS_FILE), reviews, meta, items, bad, chunk_rows
        )
        out.commit()
    summary = ConversionSummary(
        source=f"amazon 2014 ({os.path.basename(reviews)})",
        out_dir=out_dir,
        counts=dict(
            interactions=num_interactions,
            users=num_users,
            items=len(items),
            categories=len({r[3] for r in items.values() if r[3] is not None}),
            items_with_title=sum(r[1] is not None for r in items.values()),
            items_with_brand=sum(r[2] is not None for r in items.values()),
            items_with_price=sum(r[5] is not None for r in items.values()),
            items_with_image=len(image_rows),
        ),
        skipped=dict(sorted(skipped.items())),
    )
    if validate:
        validate_raw(out_dir)
    return finish(summary, bad, timer, verbose)
