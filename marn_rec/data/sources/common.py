"""What the converters share: the bad-data policy, the summary they return, line reading with
byte-based progress, chunked parquet writing, and all-or-nothing replacement of the output files.
"""

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from marn_rec.data.schema import DataError

# What a converter does with bad data: "raise" a DataError naming file and line / record, or
# "drop" the offending line / record / row and count it (by reason) in the summary.
ERRORS = ("raise", "drop")


def check_errors_policy(errors: str) -> None:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, not {errors!r}")


@dataclass
class ConversionSummary:
    """What a conversion wrote and what it left out. ``dropped`` counts bad data dropped under
    ``errors="drop"`` (by reason), with the first case of each reason in ``examples``; ``skipped``
    counts input that is not bad but not used (e.g. meta lines of items nobody reviewed)."""

    source: str
    out_dir: str
    counts: Dict[str, int] = field(default_factory=dict)
    dropped: Dict[str, int] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        """The whole summary in one line."""

        def fmt(d: Dict[str, int]) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"

        return (
            f"{self.source} -> {self.out_dir}: {fmt(self.counts)}; dropped: {fmt(self.dropped)}; "
            f"skipped: {fmt(self.skipped)}; {self.seconds:.1f} s"
        )

    def as_dict(self) -> Dict[str, Any]:
        return dict(
            source=self.source, out_dir=self.out_dir, counts=dict(self.counts), dropped=dict(self.dropped),
            skipped=dict(self.skipped), examples=dict(self.examples), seconds=self.seconds,
        )


class BadData:
    """Applies the policy to one case of bad data: raises it, or counts it as dropped."""

    def __init__(self, errors: str) -> None:
        check_errors_policy(errors)
        self.errors = errors
        self.dropped: Counter = Counter()
        self.examples: Dict[str, str] = {}

    def __call__(self, reason: str, error: DataError, count: int = 1) -> None:
        """``count`` cases of one reason at once (the error describes the first)."""
        if self.errors == "raise":
            raise error
        self.dropped[reason] += count
        self.examples.setdefault(reason, str(error))

    def fill(self, summary: ConversionSummary) -> None:
        summary.dropped = dict(sorted(self.dropped.items()))
        summary.examples = dict(sorted(self.examples.items()))


def iter_lines(path: str, desc: str, progress: bool) -> Iterator[Tuple[int, bytes]]:
    """Yields (1-based line number, raw line) of a text file, with a progress bar in bytes."""
    with open(path, "rb") as f, tqdm(
        total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc, disable=not progress
    ) as bar:
        pending = 0
        for number, line in enumerate(f, 1):
            pending += len(line)
            if pending >= 1 << 22:  # updating tqdm per line would cost more than parsing
                bar.update(pending)
                pending = 0
            yield number, line
        bar.update(pending)


class ChunkedParquetWriter:
    """Writes rows to a parquet file in chunks of ``chunk_rows`` (one row group each), so that a
    log of any length is written in bounded memory."""

    def __init__(self, path: str, schema: pa.Schema, chunk_rows: int = 500_000) -> None:
        self.path, self.schema, self.chunk_rows = path, schema, chunk_rows
        self._writer = pq.ParquetWriter(path, schema)
        self._columns: List[List[Any]] = [[] for _ in schema.names]
        self.num_rows = 0

    def append(self, row: Sequence[Any]) -> None:
        for column, value in zip(self._columns, row):
            column.append(value)
        if len(self._columns[0]) >= self.chunk_rows:
            self.flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Writes a whole record batch (after the rows appended before it)."""
        self.flush()
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.num_rows += batch.num_rows

    def flush(self) -> None:
        if not self._columns[0]:
            return
        arrays = [pa.array(c, type=f.type) for c, f in zip(self._columns, self.schema)]
        self._columns = [[] for _ in self.schema.names]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.num_rows += len(arrays[0])

    def close(self) -> None:
        self.flush()
        self._writer.close()


class OutputFiles:
    """Output files written under temporary names and renamed into place together on success, so
    that a failed conversion never leaves a raw directory that mixes old and new files. Files of a
    previous conversion that this one does not write (e.g. image_vectors.npy) are removed."""

    SUFFIX = ".partial"

    def __init__(self, out_dir: str, names: Sequence[str], stale: Sequence[str] = ()) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.names, self.stale = out_dir, list(names), list(stale)
        self._temporary: List[str] = []

    def final(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def partial(self, name: str) -> str:
        path = self.final(name) + self.SUFFIX
        self._temporary.append(path)
        return path

    def scratch(self, name: str) -> str:
        """A temporary file that is removed at the end, whatever happens."""
        return self.partial("." + name)

    def commit(self) -> None:
        for name in self.stale:
            if os.path.exists(self.final(name)):
                os.remove(self.final(name))
        for name in self.names:
            os.replace(self.final(name) + self.SUFFIX, self.final(name))
        self.cleanup()

    def cleanup(self) -> None:
        for path in self._temporary:
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> "OutputFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def finish(summary: ConversionSummary, bad: BadData, timer: Timer, verbose: bool) -> ConversionSummary:
    """Adds the drops and the time to the summary, and prints it in one line."""
    bad.fill(summary)
    summary.seconds = round(timer.seconds(), 2)
    if verbose:
        print(summary.line(), flush=True)
    return summary
