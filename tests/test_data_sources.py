"""Converters of published data sets to the user format, on small files written in exactly the
published formats: Amazon 2014 (JSON-lines reviews, single-quoted Python-literal meta, binary image
features) and MovieLens-100K (GroupLens latin-1 files, RecBole atomic files in a zip). Every column
is checked against values worked out by hand; every kind of bad data raises an error naming file and
line / record, or is dropped and counted."""

import json
import os
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from marn_rec.data import schema
from marn_rec.data.schema import DataError, validate_raw
from marn_rec.data.sources import (
    FetchError,
    convert_amazon,
    convert_grouplens_ml100k,
    convert_movielens,
    convert_recbole_ml100k,
    fetch_recbole_ml100k,
)
from marn_rec.data.sources import movielens

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")

# ---------------------------------------------------------------------------------------------
# Amazon 2014

REVIEWS = [
    {"reviewerID": "A2SUAM1J3GNN3B", "asin": "B00000A001", "reviewerName": "J. McDonald", "helpful": [2, 3],
     "reviewText": "Great sound.", "overall": 5.0, "summary": "Heavenly", "unixReviewTime": 1252800000,
     "reviewTime": "09 13, 2009"},
    {"reviewerID": "A2SUAM1J3GNN3B", "asin": "B00000A003", "reviewerName": "J. McDonald", "helpful": [0, 0],
     "reviewText": "Café-quality sound – über gut", "overall": 4.0, "summary": "Nice", "unixReviewTime": 1262304000,
     "reviewTime": "01 1, 2010"},
    {"reviewerID": "A14VAT5EAX3D9S", "asin": "B00000A002", "helpful": [1, 1], "reviewText": "Meh",
     "overall": 2.0, "summary": "Meh", "unixReviewTime": 1360000000, "reviewTime": "02 4, 2013"},
    {"reviewerID": "A14VAT5EAX3D9S", "asin": "B00000A001", "reviewerName": "Jake", "helpful": [0, 0],
     "reviewText": "Fine", "overall": 3.0, "summary": "Ok", "unixReviewTime": 1360000100, "reviewTime": "02 4, 2013"},
    {"reviewerID": "AJKWF4W7QD4NS", "asin": "B00000A004", "reviewerName": "Ann", "helpful": [5, 9],
     "reviewText": "For my kid", "overall": 1.0, "summary": "Broke", "unixReviewTime": 1400000000,
     "reviewTime": "05 13, 2014"},
]

# One Python literal per line with single quotes, as published (a line whose asin is not the first
# key; a string with an apostrophe, hence double quotes; \x / \u escapes; raw UTF-8; u'' prefix).
META_LINES = [
    "{'asin': 'B00000A001', 'title': 'Sony MDR-7506 Headphones', 'price': 99.99, 'imUrl': "
    "'http://ecx.images-amazon.com/images/I/41.jpg', 'related': {'also_bought': ['B00000A003', 'B0000XXXXX'], "
    "'bought_together': ['B00000A003']}, 'salesRank': {'Electronics': 42}, 'brand': 'Sony', 'categories': "
    "[['Electronics', 'Accessories & Supplies', 'Audio & Video Accessories', 'Headphones'], "
    "['Electronics', 'Portable Audio & Video', 'Earbud Headphones']]}",
    "{'categories': [['Electronics']], 'asin': 'B00000A002', 'imUrl': 'http://ecx.images-amazon.com/images/I/42.jpg'}",
    "{'asin': 'B00000A099', 'title': 'Nobody reviewed me', 'categories': [['Electronics', 'Cables']]}",
    "{'asin': 'B00000A003', 'title': 'Caf\\xe9 Bluetooth Speaker \\u2013 \\u00fcber', 'price': 5, 'brand': "
    "u'Bösendorfer', 'salesRank': {}, 'categories': [['Electronics', 'Computers & Accessories'], "
    "['Electronics', 'Computers & Accessories']]}",
    "{'asin': 'B00000A004', 'title': \"Kid's Tablet\", 'brand': '', 'salesRank': {'Toys & Games': 1500, "
    "'Electronics': 30}, 'categories': []}",
]

# By hand: category_id = leaf of the LAST path (DIN), categories = leaves of all paths, in order.
EXPECTED_ITEMS = [
    dict(item_id="B00000A001", title="Sony MDR-7506 Headphones", brand_id="Sony", category_id="Earbud Headphones",
         categories=["Headphones", "Earbud Headphones"], price=99.99, sales_rank=42.0),
    dict(item_id="B00000A002", title=None, brand_id=None, category_id="Electronics", categories=["Electronics"],
         price=None, sales_rank=None),
    dict(item_id="B00000A003", title="Café Bluetooth Speaker – über", brand_id="Bösendorfer",
         category_id="Computers & Accessories", categories=["Computers & Accessories"], price=5.0, sales_rank=None),
    dict(item_id="B00000A004", title="Kid's Tablet", brand_id=None, category_id=None, categories=[], price=None,
         sales_rank=1500.0),
]

DIM = 4096
RECORD = 10 + 4 * DIM


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype("<f4")


# (ASIN, vector seed): two ASINs no other file knows, and a second record for B00000A001.
IMAGE_RECORDS = [("B0000ZZZZZ", 1), ("B00000A003", 2), ("B00000A001", 3), ("B0000ZZZZY", 4), ("B00000A001", 5)]


def _image_file(path, records=IMAGE_RECORDS, tail=b"", nan_seed=None):
    with open(path, "wb") as f:
        for asin, seed in records:
            v = _vector(seed)
            if seed == nan_seed:
                v[7] = np.nan
            f.write(asin.encode("ascii") + struct.pack(f"<{DIM}f", *v))
        f.write(tail)
    return str(path)


def _amazon_files(tmp_path, reviews=None, meta=None):
    r = tmp_path / "reviews_Electronics_5.json"
    lines = reviews if reviews is not None else [json.dumps(x) for x in REVIEWS]
    r.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = tmp_path / "meta_Electronics.json"
    m.write_text("\n".join(meta if meta is not None else META_LINES) + "\n", encoding="utf-8")
    return str(r), str(m)


def _convert(tmp_path, **kw):
    reviews, meta = kw.pop("files", None) or _amazon_files(tmp_path)
    return convert_amazon(reviews, meta, str(tmp_path / "raw"), progress=False, verbose=False, **kw)


def test_amazon_every_column_by_hand(tmp_path):
    images = _image_file(tmp_path / "image_features_Electronics.b")
    summary = _convert(tmp_path, image_features=images, chunk_rows=2)  # 2 rows: several row groups
    raw = tmp_path / "raw"
    items = pq.read_table(raw / "items.parquet").to_pylist()
    # Images are copied in file order: B00000A003 -> row 0, B00000A001 (first record) -> row 1.
    image_rows = {"B00000A001": 1, "B00000A003": 0}
    assert items == [dict(e, image_row=image_rows.get(e["item_id"])) for e in EXPECTED_ITEMS]
    vectors = np.load(raw / "image_vectors.npy", mmap_mode="r")
    assert vectors.shape == (2, DIM) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0], _vector(2))
    np.testing.assert_array_equal(vectors[1], _vector(3))  # not the duplicate record's
    inter = pq.read_table(raw / "interactions.parquet")
    assert [str(t) for t in inter.schema.types] == ["string", "string", "int64", "float"]
    assert inter.to_pylist() == [
        dict(user_id=r["reviewerID"], item_id=r["asin"], timestamp=r["unixReviewTime"], rating=r["overall"])
        for r in REVIEWS
    ]
    assert summary.counts == dict(
        interactions=5, users=3, items=4, categories=3, items_with_title=3, items_with_brand=2, items_with_price=2,
        items_with_image=2,
    )
    assert summary.dropped == {}
    assert summary.skipped == dict(image_duplicate_records=1, image_records_unused=2, meta_without_reviews=1)
    info = validate_raw(str(raw))
    assert [(f.name, f.multi_valued) for f in info.id_features] == [
        ("brand_id", False), ("category_id", False), ("categories", True)
    ]
    assert info.statistics == ("price", "sales_rank") and info.title_column == "title"
    assert not [n for n in os.listdir(raw) if n.endswith(".partial")]


def test_amazon_without_images_and_first_category_path(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    np.save(raw / "image_vectors.npy", np.zeros((1, 2), np.float32))  # left by an earlier conversion
    _convert(tmp_path, category_path=0)
    items = pq.read_table(raw / "items.parquet")
    assert "image_row" not in items.column_names and not (raw / "image_vectors.npy").exists()
    assert items.column("category_id").to_pylist() == ["Headphones", "Electronics", "Computers & Accessories", None]


def test_amazon_summary_is_one_printed_line(tmp_path, capsys):
    reviews, meta = _amazon_files(tmp_path)
    summary = convert_amazon(reviews, meta, str(tmp_path / "raw"), progress=False)
    out = capsys.readouterr().out
    assert out == summary.line() + "\n" and "interactions 5" in out and "dropped: none" in out


def _error(tmp_path, **kw) -> DataError:
    with pytest.raises(DataError) as e:
        _convert(tmp_path, **kw)
    assert not [n for n in os.listdir(tmp_path / "raw") if n.endswith(".partial")]  # nothing half-written
    return e.value


def test_malformed_review_line(tmp_path):
    lines = [json.dumps(x) for x in REVIEWS]
    lines[2] = lines[2][:40]  # a cut line
    lines[3] = json.dumps({k: v for k, v in REVIEWS[3].items() if k != "overall"})
    files = _amazon_files(tmp_path, reviews=lines)
    e = _error(tmp_path, files=files)
    assert e.file.endswith("reviews_Electronics_5.json") and e.line == 3 and "line 3" in str(e)
    summary = _convert(tmp_path, files=files, errors="drop")
    assert summary.dropped == dict(malformed_review=2) and "line 3" in summary.examples["malformed_review"]
    inter = pq.read_table(tmp_path / "raw" / "interactions.parquet")
    assert inter.column("timestamp").to_pylist() == [REVIEWS[i]["unixReviewTime"] for i in (0, 1, 4)]
    lines[3] = json.dumps(dict(REVIEWS[3], unixReviewTime="1360000100"))
    e = _error(tmp_path, files=_amazon_files(tmp_path, reviews=[json.dumps(REVIEWS[0]), lines[3]]))
    assert e.line == 2 and "unixReviewTime" in str(e)


def test_malformed_meta_line_is_never_evaluated(tmp_path, monkeypatch):
    hit = tmp_path / "evaluated"
    meta = list(META_LINES)
    # A line that eval() would run; ast.literal_eval refuses it.
    meta[1] = f"{{'asin': 'B00000A002', 'title': __import__('pathlib').Path({str(hit)!r}).touch()}}"
    files = _amazon_files(tmp_path, meta=meta)
    e = _error(tmp_path, files=files)
    assert e.file.endswith("meta_Electronics.json") and e.line == 2 and not hit.exists()
    # Dropped: its reviews then have no meta line, and are dropped (and counted) as well.
    summary = _convert(tmp_path, files=files, errors="drop")
    assert summary.dropped == dict(malformed_meta=1, review_without_meta=1) and not hit.exists()
    assert "line 3" in summary.examples["review_without_meta"]  # the review of B00000A002
    assert pq.read_table(tmp_path / "raw" / "items.parquet").column("item_id").to_pylist() == [
        "B00000A001", "B00000A003", "B00000A004"
    ]


def test_meta_field_of_wrong_type(tmp_path):
    meta = list(META_LINES)
    meta[3] = meta[3].replace("'price': 5", "'price': 'five'")
    e = _error(tmp_path, files=_amazon_files(tmp_path, meta=meta))
    assert e.line == 4 and "price" in str(e)


def test_review_of_an_asin_without_meta(tmp_path):
    files = _amazon_files(tmp_path, meta=[m for m in META_LINES if "B00000A004" not in m[:30]])
    e = _error(tmp_path, files=files)
    assert e.file.endswith("reviews_Electronics_5.json") and e.line == 5 and "B00000A004" in str(e)
    summary = _convert(tmp_path, files=files, errors="drop")
    assert summary.dropped == dict(review_without_meta=1) and summary.counts["interactions"] == 4


def test_duplicate_meta_line(tmp_path):
    files = _amazon_files(tmp_path, meta=META_LINES + [META_LINES[0].replace("Sony MDR", "Other")])
    e = _error(tmp_path, files=files)
    assert e.line == 6 and "B00000A001" in str(e)
    summary = _convert(tmp_path, files=files, errors="drop")
    assert summary.dropped == dict(duplicate_meta=1)
    assert pq.read_table(tmp_path / "raw" / "items.parquet").column("title")[0].as_py() == "Sony MDR-7506 Headphones"


def test_truncated_image_file(tmp_path):
    # The last record stops in the middle of its vector (an interrupted download).
    tail = b"B00000A002" + struct.pack("<100f", *range(100))
    images = _image_file(tmp_path / "image_features_Electronics.b", tail=tail)
    e = _error(tmp_path, image_features=images)
    assert e.record == 5 and e.file == images and f"{10 + 400} bytes" in str(e)
    summary = _convert(tmp_path, image_features=images, errors="drop")
    assert summary.dropped == dict(truncated_image_record=1)
    items = pq.read_table(tmp_path / "raw" / "items.parquet")
    assert items.column("image_row").to_pylist() == [1, None, 0, None]


def test_nan_in_an_image_vector(tmp_path):
    images = _image_file(tmp_path / "image_features_Electronics.b", nan_seed=2)  # B00000A003's
    e = _error(tmp_path, image_features=images)
    assert e.record == 1 and "B00000A003" in str(e)
    summary = _convert(tmp_path, image_features=images, errors="drop")
    assert summary.dropped == dict(non_finite_image=1) and summary.counts["items_with_image"] == 1
    items = pq.read_table(tmp_path / "raw" / "items.parquet")
    assert items.column("image_row").to_pylist() == [1, None, None, None]
    validate_raw(str(tmp_path / "raw"))  # the unreferenced row is zeros, not NaN


def test_meta_of_another_category(tmp_path):
    files = _amazon_files(tmp_path, meta=[META_LINES[2]])
    with pytest.raises(DataError, match="no meta line matches a review"):
        _convert(tmp_path, files=files)


# ---------------------------------------------------------------------------------------------
# MovieLens-100K

GENRE_FILE = "".join(f"{g}|{i}\n" for i, g in enumerate(movielens.GENRES)) + "\n"


def _flags(*names):
    return "|".join("1" if g in names else "0" for g in movielens.GENRES)


U_ITEM = [
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
    + _flags("Animation", "Children's", "Comedy"),
    "6|Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)|01-Jan-1995||http://us.imdb.com/Title?Yao+a+yao|"
    + _flags("Drama"),
    "267|unknown||||" + _flags("unknown"),
    "543|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables%2C%20Les|"
    + _flags("Drama", "Musical"),
    "1412|Land Before Time III: The Time of the Great Giving (1995) (V)|08-Feb-1995||http://x|"
    + _flags("Animation", "Children's"),
    "1681|You So Crazy|01-Jan-1994||http://x|" + _flags("Comedy"),
]
U_DATA = [(196, 1, 3, 881250949), (186, 543, 3, 891717742), (22, 267, 1, 878887116), (196, 1412, 5, 881250950),
          (244, 6, 2, 880606923), (22, 1681, 4, 878887117)]

# The same movies as RecBole 1.2.1 ships them (its typo for 267 and its split of 1412 included).
RECBOLE_ITEM = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "6\tShanghai Triad (Yao a yao yao dao waipo qiao)\t1995\tDrama",
    "267\tunkonwn\tunkonwn\tunknown",
    "543\tMisérables, Les\t1995\tDrama Musical",
    "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's",
    "1681\tYou So Crazy\t1994\tComedy",
]

EXPECTED_MOVIES = [
    dict(item_id=1, title="Toy Story", release_year=1995, genres=["Animation", "Children's", "Comedy"]),
    dict(item_id=6, title="Shanghai Triad (Yao a yao yao dao waipo qiao)", release_year=1995, genres=["Drama"]),
    dict(item_id=267, title="unknown", release_year=None, genres=["unknown"]),
    dict(item_id=543, title="Misérables, Les", release_year=1995, genres=["Drama", "Musical"]),
    dict(item_id=1412, title="Land Before Time III: The Time of the Great Giving", release_year=1995,
         genres=["Animation", "Children's"]),
    dict(item_id=1681, title="You So Crazy", release_year=1994, genres=["Comedy"]),
]
EXPECTED_RATINGS = [dict(user_id=u, item_id=i, timestamp=t, rating=float(r)) for u, i, r, t in U_DATA]


def _grouplens(tmp_path, u_item=U_ITEM, u_data=None, genre=True):
    d = tmp_path / "ml-100k"
    d.mkdir(exist_ok=True)
    (d / "u.item").write_bytes(("\n".join(u_item) + "\n").encode("latin-1"))
    rows = u_data if u_data is not None else ["\t".join(map(str, r)) for r in U_DATA]
    (d / "u.data").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    if genre:
        (d / "u.genre").write_bytes(GENRE_FILE.encode("latin-1"))
    return str(d)


def _recbole_zip(tmp_path, item=RECBOLE_ITEM, inter=None):
    inter = inter or ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [
        f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in U_DATA
    ]
    path = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
        base = "recbole/dataset_example/ml-100k/"
        z.writestr(base + "ml-100k.item", "\n".join(item) + "\n")
        z.writestr(base + "ml-100k.inter", "\n".join(inter) + "\n")
        z.writestr(base + "ml-100k.user", "user_id:token\tage:token\n196\t49\n")
    return str(path)


def test_grouplens_by_hand(tmp_path):
    out = tmp_path / "raw"
    summary = convert_grouplens_ml100k(_grouplens(tmp_path), str(out), verbose=False)
    assert pq.read_table(out / "items.parquet").to_pylist() == EXPECTED_MOVIES
    inter = pq.read_table(out / "interactions.parquet")
    assert [str(t) for t in inter.schema.types] == ["int64", "int64", "int64", "float"]
    assert inter.to_pylist() == EXPECTED_RATINGS
    assert summary.counts == dict(interactions=6, users=4, items=6, rated_items=6, items_with_release_year=5, genres=6)
    info = validate_raw(str(out))
    assert [(f.name, f.kind) for f in info.id_features] == [("release_year", "int"), ("genres", "list<string>")]


def test_grouplens_zip_without_u_genre_is_the_same(tmp_path):
    folder = _grouplens(tmp_path, genre=False)
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in os.listdir(folder):
            z.write(os.path.join(folder, name), f"ml-100k/{name}")
    convert_grouplens_ml100k(str(archive), str(tmp_path / "raw"), verbose=False)
    assert pq.read_table(tmp_path / "raw" / "items.parquet").to_pylist() == EXPECTED_MOVIES


def test_recbole_layout_gives_the_same_tables(tmp_path):
    out = tmp_path / "raw"
    convert_recbole_ml100k(_recbole_zip(tmp_path), str(out), verbose=False)
    expected = [dict(m, title="unkonwn") if m["item_id"] == 267 else m for m in EXPECTED_MOVIES]
    assert pq.read_table(out / "items.parquet").to_pylist() == expected
    assert pq.read_table(out / "interactions.parquet").to_pylist() == EXPECTED_RATINGS


def test_movielens_bad_lines(tmp_path):
    rows = ["\t".join(map(str, r)) for r in U_DATA]
    bad = rows[:2] + ["22\t267\t1"] + rows[3:] + ["5\t999\t4\t878887118"]  # short line, unknown item
    folder = _grouplens(tmp_path, u_data=bad)
    with pytest.raises(DataError) as e:
        convert_grouplens_ml100k(folder, str(tmp_path / "raw"), verbose=False)
    assert e.value.file.endswith("u.data") and e.value.line == 3 and "4 tab-separated fields" in str(e.value)
    summary = convert_grouplens_ml100k(folder, str(tmp_path / "raw"), errors="drop", verbose=False)
    assert summary.dropped == dict(malformed_line=1, rating_without_item=1)
    assert "line 7" in summary.examples["rating_without_item"] and summary.counts["interactions"] == 5

    item = RECBOLE_ITEM + ["1\tToy Story again\t1995\tComedy"]
    with pytest.raises(DataError) as e:
        convert_recbole_ml100k(_recbole_zip(tmp_path, item=item), str(tmp_path / "raw"), verbose=False)
    assert e.value.file.endswith(":recbole/dataset_example/ml-100k/ml-100k.item") and e.value.line == 8
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "196\t1\t3\t881250949.5"]
    with pytest.raises(DataError, match=r"ml-100k.inter, line 2: timestamp '881250949.5' is not whole"):
        convert_recbole_ml100k(_recbole_zip(tmp_path, inter=inter), str(tmp_path / "raw"), verbose=False)
    inter = ["user_id:token\titem_id:token\ttimestamp:float", "196\t1\t881250949"]
    with pytest.raises(DataError, match=r"line 1: the header lacks 'rating'"):
        convert_recbole_ml100k(_recbole_zip(tmp_path, inter=inter), str(tmp_path / "raw"), verbose=False)


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    def failing(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "recbole==1.2.1" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for recbole==1.2.1")

    monkeypatch.setattr(movielens.subprocess, "run", failing)
    with pytest.raises(FetchError, match="No matching distribution"):
        fetch_recbole_ml100k(str(tmp_path))


def test_real_recbole_wheel(pytestconfig, tmp_path, monkeypatch):
    """Downloads recbole 1.2.1 from PyPI once (kept in pytest's cache) and converts MovieLens-100K."""
    cached = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    cache = str(cached.mkdir("recbole_wheel") if cached else tmp_path)
    try:
        wheel = fetch_recbole_ml100k(cache, timeout_s=120)
    except FetchError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    # The second call reuses the cached wheel: pip is not run again.
    monkeypatch.setattr(movielens.subprocess, "run", lambda *a, **k: pytest.fail("pip ran again"))
    assert fetch_recbole_ml100k(cache) == wheel
    out = str(tmp_path / "raw")
    summary = convert_movielens(out, "recbole", cache_dir=cache, verbose=False)
    assert (summary.counts["interactions"], summary.counts["users"], summary.counts["items"]) == (100_000, 943, 1_682)
    assert summary.dropped == {}
    items = {r["item_id"]: r for r in pq.read_table(os.path.join(out, "items.parquet")).to_pylist()}
    assert items[1] == dict(item_id=1, title="Toy Story", release_year=1995, genres=["Animation", "Children's", "Comedy"])
    assert items[1412]["release_year"] == 1995 and items[267]["release_year"] is None
    first = pq.ParquetFile(os.path.join(out, "interactions.parquet")).read_row_group(0).slice(0, 1).to_pylist()
    assert first == [dict(user_id=196, item_id=242, timestamp=881250949, rating=3.0)]


# ---------------------------------------------------------------------------------------------
# The command lines


def _run_example(name, argv):
    path = os.path.join(EXAMPLES, name)
    module = types.ModuleType(name[:-3])
    module.__file__ = path
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), module.__dict__)
    module.main(argv)


def test_prepare_amazon_calls_prepare(tmp_path, monkeypatch, capsys):
    """The command converts to OUT/raw, then calls prepare(OUT/raw, OUT/prepared, PrepareConfig(...))
    with the options given (a stand-in preparation module records the call)."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class PrepareConfig:
        min_count: int = 1
        max_length: int = 50
        cold_item_fraction: float = 0.0
        split: str = "last"
        source: str = ""
        progress: bool = True

    calls = []
    fake = types.ModuleType("marn_rec.data.prepare")
    fake.PrepareConfig = PrepareConfig
    fake.prepare = lambda raw, out, config: calls.append((raw, out, config)) or {"samples": 1}
    monkeypatch.setitem(sys.modules, "marn_rec.data.prepare", fake)
    reviews, meta = _amazon_files(tmp_path)
    out = str(tmp_path / "amazon")
    _run_example("prepare_amazon.py", [
        "--reviews", reviews, "--meta", meta, "--out", out, "--no-progress", "--max-length", "20",
        "--cold-item-fraction", "0.1", "--split", "time",
    ])
    config = PrepareConfig(max_length=20, cold_item_fraction=0.1, split="time", progress=False,
                           source="amazon 2014 (reviews_Electronics_5.json)")
    assert calls == [(os.path.join(out, "raw"), os.path.join(out, "prepared"), config)]
    assert validate_raw(os.path.join(out, "raw")).num_interactions == 5
    assert '"samples": 1' in capsys.readouterr().out


def test_prepare_movielens_raw_only(tmp_path):
    out = str(tmp_path / "ml")
    _run_example("prepare_movielens.py", ["--source", "recbole", "--path", _recbole_zip(tmp_path), "--out", out,
                                          "--raw-only"])
    assert validate_raw(os.path.join(out, "raw")).num_items == 6
    assert schema.ITEMS_FILE in os.listdir(os.path.join(out, "raw"))
