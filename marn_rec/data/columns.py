"""Where a column chunk first breaks a rule: the 0-based row that a :class:`DataError` names
(:mod:`marn_rec.data.schema`). Each helper returns None when no row does."""

from typing import Any, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def first_true(mask: Any) -> Optional[int]:
    """Index of the first true value of a boolean (chunked) array (nulls count as false), else None."""
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    m = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    if not m.any():
        return None
    return int(np.argmax(m))


def first_null(values: pa.Array) -> Optional[int]:
    if values.null_count == 0:
        return None
    return first_true(pc.is_null(values))


def first_non_finite(values: pa.Array) -> Optional[int]:
    # is_finite is null for nulls (missing, allowed) and false for NaN / +-inf.
    return first_true(pc.invert(pc.is_finite(values)))


def first_null_element(values: pa.Array) -> Optional[int]:
    """Row of the first list holding a null element (a null list itself is allowed)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    flat = pc.list_flatten(values)
    if flat.null_count == 0:
        return None
    rows = pc.list_parent_indices(values)
    return int(rows[first_true(pc.is_null(flat))].as_py())


def first_duplicate(values: pa.Array) -> Optional[Tuple[int, Any]]:
    if pc.count_distinct(values).as_py() == len(values):
        return None
    seen = set()
    for i, v in enumerate(values.to_pylist()):  # only on the error path
        if v in seen:
            return i, v
        seen.add(v)
    return None
