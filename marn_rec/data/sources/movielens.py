"""MovieLens-100K converted to the user format (``docs/data_format.md``), from either published layout:

- GroupLens (``ml-100k.zip`` or its unpacked folder): ``u.data`` (tab: user, item, rating, unix
  time), ``u.item`` (pipe-separated, latin-1: id | title with year | release date | video release
  date | IMDb URL | 19 genre flags) and ``u.genre`` (genre names; the standard 19 if absent).
- RecBole 1.2.1 atomic files, as shipped inside the recbole wheel on PyPI
  (``recbole/dataset_example/ml-100k/``): ``ml-100k.inter`` (``user_id:token item_id:token
  rating:float timestamp:float``, tab-separated, typed header) and ``ml-100k.item`` (``item_id:token
  movie_title:token_seq release_year:token class:token_seq``). :func:`fetch_recbole_ml100k`
  downloads the wheel with pip (never installs it) and the files are read from the zip.

Both give the same tables. interactions: ``user_id``, ``item_id`` (int64), ``timestamp`` (int64),
``rating`` (float32). items: ``item_id`` (int64), ``title`` (without the trailing "(1995)"),
``release_year`` (int64, a categorical feature: the year in the title, else the release date's; null
if neither), ``genres`` (list<string>, a multi-valued categorical feature).

The data set is 2 MB, so its files are read whole. Bad data (a malformed line, a duplicate item, a
rating of an unknown item) raises a :class:`~marn_rec.data.schema.DataError` naming the file and
line, or with ``errors="drop"`` is dropped and counted in the returned summary. The user files
(``u.user``, ``ml-100k.user``) are not used: the user format has no user table.
"""

import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from marn_rec.data.schema import (
    IMAGE_VECTORS_FILE,
    INTERACTIONS_FILE,
    ITEMS_FILE,
    MAX_TIMESTAMP_SECONDS,
    DataError,
    validate_raw,
)
from marn_rec.data.sources.common import BadData, ConversionSummary, OutputFiles, Timer, finish

# u.genre of the GroupLens release, in flag order.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
RECBOLE_VERSION = "1.2.1"
# sha256 of recbole-1.2.1-py3-none-any.whl as served by PyPI (files.pythonhosted.org).
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "marn_rec")

INTERACTION_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()), ("rating", pa.float32())]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("release_year", pa.int64()),
        ("genres", pa.list_(pa.string())),
    ]
)

# "Toy Story (1995)" -> ("Toy Story", 1995). A trailing annotation after the year goes as well:
# GroupLens item 1412 is "Land Before Time III: ... (1995) (V)" (V = video release), which RecBole
# split into the title "... (1995)" and the release year "V".
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)(?:\s*\([^()]*\))?\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


class FetchError(RuntimeError):
    """The recbole wheel could not be downloaded (PyPI unreachable, or a different file)."""


def split_title(title: str) -> Tuple[Optional[str], Optional[int]]:
    """(title without its trailing year, the year or None); an empty title is None."""
    m = _TITLE_YEAR.match(title)
    if m:
        return (m.group(1).strip() or None), int(m.group(2))
    return (title.strip() or None), None


# ---------------------------------------------------------------------------------------------
# Reading files from a folder or a zip (the GroupLens zip, the recbole wheel).


class _Files:
    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.isdir(path):
            self.zip = None
        elif zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
        else:
            raise DataError(path, "neither a folder nor a zip archive")

    def find(self, name: str) -> Optional[str]:
        if self.zip is None:
            p = os.path.join(self.path, name)
            return p if os.path.isfile(p) else None
        members = sorted((m for m in self.zip.namelist() if m.rsplit("/", 1)[-1] == name), key=len)
        return members[0] if members else None

    def label(self, name: str) -> str:
        """How errors name the file: its path, or archive:member."""
        found = self.find(name) or name
        return found if self.zip is None else f"{self.path}:{found}"

    def lines(self, name: str, encoding: str) -> Iterator[Tuple[int, str]]:
        """(1-based line number, decoded line without its end); blank lines are left out."""
        found = self.find(name)
        if found is None:
            where = "folder" if self.zip is None else "archive"
            raise DataError(os.path.join(self.path, name), f"missing from the {where}")
        if self.zip is None:
            with open(found, "rb") as f:
                data = f.read()
        else:
            data = self.zip.read(found)
        for number, raw in enumerate(data.split(b"\n"), 1):
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue
            try:
                yield number, raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(self.label(name), f"not {encoding} text ({e})", line=number) from e


# ---------------------------------------------------------------------------------------------
# Parsing helpers shared by both layouts.


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an integer") from None


def _rating(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"rating {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"rating {text!r} is not finite")
    return value


def _timestamp(text: str) -> int:
    try:
        value = float(text)  # RecBole types it float; GroupLens writes integers
    except ValueError:
        raise ValueError(f"timestamp {text!r} is not a number") from None
    if not (math.isfinite(value) and value == int(value) and 0 <= value <= MAX_TIMESTAMP_SECONDS):
        raise ValueError(f"timestamp {text!r} is not whole unix seconds")
    return int(value)


def _rating_row(user: str, item: str, rating: str, timestamp: str) -> tuple:
    """(user_id, item_id, timestamp, rating): the order of INTERACTION_SCHEMA."""
    return _int(user, "user id"), _int(item, "item id"), _timestamp(timestamp), _rating(rating)


def _add_item(items: Dict[int, tuple], row: tuple, label: str, number: int, bad: BadData) -> None:
    if row[0] in items:
        bad("duplicate_item", DataError(label, f"second line of item {row[0]}", line=number))
    else:
        items[row[0]] = row


def _add_rating(
    ratings: List[tuple], items: Dict[int, tuple], row: tuple, label: str, number: int, bad: BadData
) -> None:
    if row[1] not in items:
        problem = f"rating of item {row[1]}, which has no item line"
        bad("rating_without_item", DataError(label, problem, line=number))
    else:
        ratings.append(row)


# ---------------------------------------------------------------------------------------------
# GroupLens


def _grouplens_genres(files: _Files) -> Tuple[str, ...]:
    if files.find("u.genre") is None:
        return GENRES
    genres = []
    for number, line in files.lines("u.genre", "latin-1"):
        name, _, index = line.partition("|")
        if not name or index.strip() != str(len(genres)):
            problem = f"'name|{len(genres)}' expected, found {line!r}"
            raise DataError(files.label("u.genre"), problem, line=number)
        genres.append(name)
    return tuple(genres)


def _read_grouplens(files: _Files, bad: BadData) -> Tuple[Dict[int, tuple], List[tuple]]:
    genres = _grouplens_genres(files)
    items: Dict[int, tuple] = {}
    label = files.label("u.item")
    for number, line in files.lines("u.item", "latin-1"):
        fields = line.split("|")
        try:
            if len(fields) != 5 + len(genres):
                raise ValueError(f"{5 + len(genres)} '|'-separated fields expected, found {len(fields)}")
            item = _int(fields[0], "item id")
            flags = fields[5:]
            if any(f not in ("0", "1") for f in flags):
                raise ValueError(f"genre flags must be 0 or 1: {flags}")
        except ValueError as e:
            bad("malformed_line", DataError(label, str(e), line=number))
            continue
        title, year = split_title(fields[1])
        if year is None and _DATE_YEAR.search(fields[2]):
            year = int(_DATE_YEAR.search(fields[2]).group(1))
        item_genres = [g for g, f in zip(genres, flags) if f == "1"]
        _add_item(items, (item, title, year, item_genres), label, number, bad)
    ratings: List[tuple] = []
    label = files.label("u.data")
    for number, line in files.lines("u.data", "latin-1"):
        fields = line.split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"4 tab-separated fields expected, found {len(fields)}")
            row = _rating_row(fields[0], fields[1], fields[2], fields[3])
        except ValueError as e:
            bad("malformed_line", DataError(label, str(e), line=number))
            continue
        _add_rating(ratings, items, row, label, number, bad)
    return items, ratings


# ---------------------------------------------------------------------------------------------
# RecBole atomic files


def _recbole_rows(
    files: _Files, name: str, required: Tuple[str, ...]
) -> Iterator[Tuple[int, Optional[List[str]], Optional[str]]]:
    """(line number, the required fields in order or None, problem or None) of an atomic file with a
    ``name:type`` header."""
    label = files.label(name)
    lines = files.lines(name, "utf-8")
    try:
        number, header = next(lines)
    except StopIteration:
        raise DataError(label, "empty file") from None
    columns = [c.split(":", 1)[0] for c in header.split("\t")]
    for c in required:
        if c not in columns:
            raise DataError(label, f"the header lacks {c!r}: {header!r}", line=number)
    where = [columns.index(c) for c in required]
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(columns):
            yield number, None, f"{len(columns)} tab-separated fields expected, found {len(fields)}"
        else:
            yield number, [fields[i] for i in where], None


def _read_recbole(files: _Files, bad: BadData) -> Tuple[Dict[int, tuple], List[tuple]]:
    name = next((n for n in ("ml-100k.item", "ml-100k.inter") if files.find(n) is None), None)
    if name is not None:
        raise DataError(files.label(name), "missing: not the recbole ml-100k atomic files")
    items: Dict[int, tuple] = {}
    label = files.label("ml-100k.item")
    required = ("item_id", "movie_title", "release_year", "class")
    for number, fields, problem in _recbole_rows(files, "ml-100k.item", required):
        try:
            if problem:
                raise ValueError(problem)
            item = _int(fields[0], "item id")
        except ValueError as e:
            bad("malformed_line", DataError(label, str(e), line=number))
            continue
        title, title_year = split_title(fields[1])
        # RecBole writes "unkonwn" (sic) for item 267 and "V" for item 1412 (see _TITLE_YEAR).
        year = int(fields[2]) if fields[2].isdigit() else title_year
        _add_item(items, (item, title, year, fields[3].split()), label, number, bad)
    ratings: List[tuple] = []
    label = files.label("ml-100k.inter")
    required = ("user_id", "item_id", "rating", "timestamp")
    for number, fields, problem in _recbole_rows(files, "ml-100k.inter", required):
        try:
            if problem:
                raise ValueError(problem)
            row = _rating_row(fields[0], fields[1], fields[2], fields[3])
        except ValueError as e:
            bad("malformed_line", DataError(label, str(e), line=number))
            continue
        _add_rating(ratings, items, row, label, number, bad)
    return items, ratings


def fetch_recbole_ml100k(cache_dir: Optional[str] = None, timeout_s: float = 300.0) -> str:
    """The recbole 1.2.1 wheel (a zip holding the ml-100k atomic files) in ``cache_dir``, downloaded
    once with ``pip download --no-deps`` (never installed) and checked against PyPI's sha256.

    Args:
        cache_dir: where the wheel is kept (default ``~/.cache/marn_rec``).
        timeout_s: limit for the download.

    Returns:
        str: the wheel's path.

    Raises:
        FetchError: pip could not download it (e.g. PyPI unreachable) or the file differs.
    """
    cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    pattern = os.path.join(cache_dir, f"recbole-{RECBOLE_VERSION}-*.whl")
    if not glob.glob(pattern):
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
            f"recbole=={RECBOLE_VERSION}", "-d", cache_dir,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise FetchError(f"pip download recbole=={RECBOLE_VERSION} took over {timeout_s:.0f} s") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"pip download recbole=={RECBOLE_VERSION} failed (PyPI unreachable?): {' | '.join(tail)}"
            )
    found = sorted(glob.glob(pattern))
    if not found:
        raise FetchError(f"pip download succeeded but no {pattern} appeared")
    with open(found[0], "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != RECBOLE_WHEEL_SHA256:
        raise FetchError(
            f"{found[0]}: sha256 {digest}, PyPI's is {RECBOLE_WHEEL_SHA256}; delete it to download again"
        )
    return found[0]


# ---------------------------------------------------------------------------------------------
# The conversion


def _convert(
    source: str, path: str, out_dir: str, errors: str, verbose: bool, validate: bool
) -> ConversionSummary:
    timer, bad = Timer(), BadData(errors)
    files = _Files(path)
    items, ratings = (_read_grouplens if source == "grouplens" else _read_recbole)(files, bad)
    if not items or not ratings:
        raise DataError(path, "no items" if not items else "no ratings")
    item_table = pa.Table.from_pylist(
        [dict(zip(ITEM_SCHEMA.names, r)) for r in items.values()], schema=ITEM_SCHEMA
    )
    columns = list(zip(*ratings))
    rating_table = pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, INTERACTION_SCHEMA)], schema=INTERACTION_SCHEMA
    )
    with OutputFiles(out_dir, [ITEMS_FILE, INTERACTIONS_FILE], stale=[IMAGE_VECTORS_FILE]) as out:
        pq.write_table(item_table, out.partial(ITEMS_FILE))
        pq.write_table(rating_table, out.partial(INTERACTIONS_FILE))
        out.commit()
    summary = ConversionSummary(
        source=f"movielens-100k ({source}: {path})",
        out_dir=out_dir,
        counts=dict(
            interactions=len(ratings),
            users=len(set(columns[0])),
            items=len(items),
            rated_items=len(set(columns[1])),
            items_with_release_year=sum(r[2] is not None for r in items.values()),
            genres=len({g for r in items.values() for g in r[3]}),
        ),
    )
    if validate:
        validate_raw(out_dir)
    return finish(summary, bad, timer, verbose)


def convert_grouplens_ml100k(
    path: str, out_dir: str, *, errors: str = "raise", verbose: bool = True, validate: bool = True
) -> ConversionSummary:
    """Converts GroupLens ``ml-100k.zip`` or its folder (u.data, u.item, u.genre) to ``out_dir``."""
    return _convert("grouplens", path, out_dir, errors, verbose, validate)


def convert_recbole_ml100k(
    path: str, out_dir: str, *, errors: str = "raise", verbose: bool = True, validate: bool = True
) -> ConversionSummary:
    """Converts the RecBole atomic files (the recbole wheel, another zip, or a folder holding
    ml-100k.inter and ml-100k.item) to ``out_dir``."""
    return _convert("recbole", path, out_dir, errors, verbose, validate)


def convert_movielens(
    out_dir: str,
    source: str = "recbole",
    path: Optional[str] = None,
    cache_dir: Optional[str] = None,
    *,
    errors: str = "raise",
    verbose: bool = True,
    validate: bool = True,
) -> ConversionSummary:
    """Converts MovieLens-100K; with ``source="recbole"`` and no ``path``, from the recbole wheel
    fetched into ``cache_dir`` (:func:`fetch_recbole_ml100k`)."""
    if source == "recbole":
        path = path or fetch_recbole_ml100k(cache_dir)
        return convert_recbole_ml100k(path, out_dir, errors=errors, verbose=verbose, validate=validate)
    if source == "grouplens":
        if path is None:
            raise ValueError("source='grouplens' needs path: ml-100k.zip or its folder")
        return convert_grouplens_ml100k(path, out_dir, errors=errors, verbose=verbose, validate=validate)
    raise ValueError(f"source must be 'recbole' or 'grouplens', not {source!r}")


def prepared_movielens(out: str, cache_dir: Optional[str] = None, **prepare_options: Any) -> str:
    """``OUT/prepared``: MovieLens-100K from the recbole wheel, converted and prepared once.

    Safe to call from every rank of a job at once: a file lock lets one process prepare while the
    others wait, and a directory that already holds a manifest is used as it is (delete it to
    prepare again with other options), unless an older marn_rec prepared it
    (``layout.PREPARE_VERSION``): then it is prepared again.

    Args:
        prepare_options: fields of :class:`marn_rec.data.prepare.PrepareConfig`.
    """
    import fcntl

    from marn_rec.data.prepare import PrepareConfig, prepare
    from marn_rec.data.prepare import layout

    raw, prepared = os.path.join(out, "raw"), os.path.join(out, "prepared")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = os.path.join(prepared, layout.MANIFEST)
        if not os.path.exists(manifest) or _stale(manifest):
            summary = convert_movielens(raw, "recbole", None, cache_dir)
            prepare(raw, prepared, PrepareConfig(source=summary.source, **prepare_options))
    return prepared


def _stale(manifest_path: str) -> bool:
    """True when the manifest was written by an older preparation (``layout.PREPARE_VERSION``)."""
    from marn_rec.data.prepare import layout

    with open(manifest_path) as f:
        return bool(layout.changes_since(json.load(f)))
