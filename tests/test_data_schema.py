"""The user format's checker: a valid raw directory is described correctly; every kind of bad data is
a DataError naming the file, the column and the first offending row; interactions are streamed."""

import os
import pickle
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marn_rec.data import schema
from marn_rec.data.schema import DataError, IdFeature, validate_raw

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "data_format.md")


def _items(**override):
    cols = dict(
        item_id=pa.array(["i0", "i1", "i2", "i3"]),
        title=pa.array(["Red shoe", None, "", "Blue hat"]),
        brand_id=pa.array(["b0", None, "b0", "b1"]),
        shop_id=pa.array([7, 7, None, 9], pa.int32()),
        genres=pa.array([["a", "b"], [], None, ["c"]], pa.list_(pa.string())),
        price=pa.array([9.5, None, 3.0, 1.0], pa.float64()),
        sales_rank=pa.array([1.0, 2.0, None, 4.0], pa.float32()),
        image_row=pa.array([0, None, 1, 0], pa.int64()),
    )
    cols.update(override)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def _interactions(n=10, **override):
    cols = dict(
        user_id=pa.array([f"u{k % 3}" for k in range(n)]),
        item_id=pa.array([f"i{k % 4}" for k in range(n)]),
        timestamp=pa.array([1_500_000_000 + k for k in range(n)], pa.int64()),
        behavior=pa.array(["click", "cart"] * (n // 2)),
        rating=pa.array([float(k % 5) for k in range(n)], pa.float32()),
        session=pa.array(list(range(n))),  # not part of the format: ignored
    )
    cols.update(override)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def _write(root, items=None, interactions=None, vectors="default"):
    os.makedirs(root, exist_ok=True)
    pq.write_table(items if items is not None else _items(), os.path.join(root, "items.parquet"))
    pq.write_table(
        interactions if interactions is not None else _interactions(), os.path.join(root, "interactions.parquet"),
        row_group_size=4,
    )
    if isinstance(vectors, str):
        vectors = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    if vectors is not None:
        np.save(os.path.join(root, "image_vectors.npy"), vectors)
    return str(root)


def test_a_valid_directory_is_described(tmp_path):
    info = validate_raw(_write(tmp_path))
    assert info.num_items == 4 and info.num_interactions == 10
    assert info.item_id_kind == "string" and info.user_id_kind == "string"
    assert info.title_column == "title"
    assert info.id_features == (
        IdFeature("brand_id", "string"), IdFeature("shop_id", "int"), IdFeature("genres", "list<string>")
    )
    assert [f.multi_valued for f in info.id_features] == [False, False, True]
    assert info.statistics == ("price", "sales_rank")
    assert info.image_shape == (2, 5) and info.has_image
    assert info.image_vectors_path == os.path.join(str(tmp_path), "image_vectors.npy")
    assert info.interaction_columns == ("behavior", "rating") and info.behavior_kind == "string"
    assert info.ignored_columns == ("session",)
    assert info.timestamp_range == (1_500_000_000, 1_500_000_009)


def test_int_ids_title_tokens_labels_and_no_image(tmp_path):
    items = pa.table(dict(item_id=pa.array([10, 20], pa.int64()),
                          title_tokens=pa.array([["red", "shoe"], None], pa.list_(pa.string())),
                          tags=pa.array([[1, 2], [3]], pa.list_(pa.int64()))))
    inter = pa.table(dict(user_id=pa.array([1, 2], pa.int64()), item_id=pa.array([20, 10], pa.int64()),
                          timestamp=pa.array([5, 6], pa.int64()), label=pa.array([1.0, 0.0], pa.float32()),
                          behavior=pa.array([0, 1], pa.int32())))
    info = validate_raw(_write(tmp_path, items, inter, vectors=None))
    assert (info.item_id_kind, info.user_id_kind, info.title_column) == ("int64", "int64", "title_tokens")
    assert info.id_features == (IdFeature("tags", "list<int64>"),) and info.statistics == ()
    assert info.image_shape is None and info.interaction_columns == ("behavior", "label")


# Each case: (what to change, file, column, row) -- the error must name all three.
ITEM_CASES = {
    "missing item_id": (dict(items=_items(item_id=None)), "items.parquet", "item_id", None),
    "float item_id": (dict(items=_items(item_id=pa.array([0.0, 1, 2, 3]))), "items.parquet", "item_id", None),
    "bool feature": (dict(items=_items(flag=pa.array([True] * 4))), "items.parquet", "flag", None),
    "null item_id": (dict(items=_items(item_id=pa.array(["i0", "i1", None, "i3"]))), "items.parquet", "item_id", 2),
    "duplicate item_id": (dict(items=_items(item_id=pa.array(["i0", "i1", "i2", "i1"]))), "items.parquet",
                          "item_id", 3),
    "NaN price": (dict(items=_items(price=pa.array([1.0, float("nan"), None, 2.0]))), "items.parquet", "price", 1),
    "inf statistic": (dict(items=_items(sales_rank=pa.array([1, 2, 3, float("-inf")], pa.float32()))),
                      "items.parquet", "sales_rank", 3),
    "null in a list": (dict(items=_items(genres=pa.array([["a"], None, ["b", None], []]))), "items.parquet",
                       "genres", 2),
    "title of wrong type": (dict(items=_items(title=pa.array([["a"]] * 4))), "items.parquet", "title", None),
    "image_row too large": (dict(items=_items(image_row=pa.array([0, 2, None, 1]))), "items.parquet",
                            "image_row", 1),
    "negative image_row": (dict(items=_items(image_row=pa.array([0, 1, None, -1]))), "items.parquet",
                           "image_row", 3),
    "image_row as int32": (dict(items=_items(image_row=pa.array([0, 1, 0, 1], pa.int32()))), "items.parquet",
                           "image_row", None),
    "NaN image vector": (dict(vectors=np.array([[0, 1], [2, np.nan]], np.float32)), "image_vectors.npy", None, 1),
    "float64 image vectors": (dict(vectors=np.zeros((2, 3))), "image_vectors.npy", None, None),
    "no image_vectors.npy": (dict(vectors=None), "image_vectors.npy", None, None),
    "image_vectors.npy without image_row": (dict(items=_items(image_row=None)), "image_vectors.npy", None, None),
}
INTERACTION_CASES = {
    "missing timestamp": (dict(timestamp=None), "timestamp", None),
    "timestamp as float": (dict(timestamp=pa.array(np.arange(10.0))), "timestamp", None),
    "int item_id for string items": (dict(item_id=pa.array(range(10))), "item_id", None),
    "null user_id": (dict(user_id=pa.array(["u"] * 6 + [None] + ["u"] * 3)), "user_id", 6),
    "null timestamp": (dict(timestamp=pa.array([1] * 9 + [None], pa.int64())), "timestamp", 9),
    "milliseconds": (dict(timestamp=pa.array([1_500_000_000_000] * 10, pa.int64())), "timestamp", 0),
    "NaN rating": (dict(rating=pa.array([1.0] * 5 + [float("nan")] * 5)), "rating", 5),
    "label 0.5": (dict(label=pa.array([0.0, 1.0, 0.5] + [1.0] * 7)), "label", 2),
    "null label": (dict(label=pa.array([0.0] * 8 + [None, 1.0])), "label", 8),
    "bool behavior": (dict(behavior=pa.array([True] * 10)), "behavior", None),
    # In the third record batch of 4 rows: the row number counts the batches before it.
    "unknown item": (dict(item_id=pa.array(["i0"] * 9 + ["nope"])), "item_id", 9),
}


def _check(e: DataError, file, column, row):
    assert os.path.basename(e.file) == file and e.column == column and e.row == row
    text = str(e)
    assert file in text
    if column is not None:
        assert f"column {column!r}" in text
    if row is not None:
        assert f"row {row} (0-based)" in text


@pytest.mark.parametrize("case", list(ITEM_CASES))
def test_bad_items(tmp_path, case):
    change, file, column, row = ITEM_CASES[case]
    root = _write(tmp_path, **change)
    with pytest.raises(DataError) as e:
        validate_raw(root, batch_rows=4)
    _check(e.value, file, column, row)


@pytest.mark.parametrize("case", list(INTERACTION_CASES))
def test_bad_interactions(tmp_path, case):
    change, column, row = INTERACTION_CASES[case]
    with pytest.raises(DataError) as e:
        validate_raw(_write(tmp_path, interactions=_interactions(**change)), batch_rows=4)
    _check(e.value, "interactions.parquet", column, row)


def test_missing_files_and_empty_tables(tmp_path):
    with pytest.raises(DataError, match=r"items.parquet: missing"):
        validate_raw(str(tmp_path))
    root = _write(tmp_path, interactions=_interactions().slice(0, 0))
    with pytest.raises(DataError, match=r"interactions.parquet: no interactions"):
        validate_raw(root)
    (tmp_path / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"items.parquet: not a readable parquet file"):
        validate_raw(root)


def test_unknown_items_can_be_counted_for_dropping(tmp_path):
    inter = _interactions(item_id=pa.array(["i0", "x", "i1", "i2", "i3", "y", "y", "i0", "i0", "i0"]))
    info = validate_raw(_write(tmp_path, interactions=inter), unknown_items="count", batch_rows=4)
    assert info.num_unknown_item_interactions == 3 and info.first_unknown_item_row == 1


def test_interactions_are_streamed(tmp_path, monkeypatch):
    """interactions.parquet is read through ParquetFile.iter_batches, never whole."""
    root = _write(tmp_path)
    sizes = []
    real = pq.ParquetFile.iter_batches

    def spy(self, batch_size=65536, **kw):
        for b in real(self, batch_size=batch_size, **kw):
            sizes.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq, "read_table", _refuse_interactions(pq.read_table))
    validate_raw(root, batch_rows=4)
    assert sizes == [4, 4, 2]


def _refuse_interactions(read_table):
    def guarded(path, *a, **kw):
        assert os.path.basename(str(path)) != "interactions.parquet", "interactions.parquet read whole"
        return read_table(path, *a, **kw)

    return guarded


def test_data_error_survives_pickling():
    e = DataError("items.parquet", "NaN", column="price", row=3)
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) == "items.parquet, column 'price', row 3 (0-based): NaN"
    assert (back.file, back.column, back.row) == ("items.parquet", "price", 3)
    assert isinstance(back, ValueError)


def test_the_documented_example_runs(tmp_path, monkeypatch):
    """The pyarrow example of docs/data_format.md writes a directory that validate_raw accepts."""
    with open(DOC, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    example = next(b for b in blocks if "pq.write_table" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, DOC, "exec"), {"__name__": "doc_example"})
    info = validate_raw(str(tmp_path / "my_raw"))
    assert info.num_items > 0 and info.has_image and info.title_column == "title"
    assert schema.ITEMS_FILE in os.listdir(tmp_path / "my_raw")
