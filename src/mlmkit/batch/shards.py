"""The input of a batch job (`mlmkit fill/score --engine ray`): files named by a path, a
directory or a glob on any filesystem pyarrow reads (local, s3://, gs://, hdfs://), counted and
cut into shards of a fixed number of rows, and each shard's records read back by row number.

The cut depends only on the files' contents and the shard size, so a rerun of a killed job gets
the same shards and can skip the finished ones. Rows are lines (blank ones included, so a row
is a position, not a parse), Parquet rows, or CSV and JSON records, numbered from 0 across the
files in sorted order. The files are listed, and their records read, as `mlmkit fill --input`
lists and reads them (io/inputs.py), so both engines see the same records.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlmkit.io.formats import Entry, iter_lines, line_entries, parquet_entries, read_entries
from mlmkit.io.inputs import LineTally, entry_items, input_columns, list_input_files
from mlmkit.io.locate import format_of, open_binary

_READ_CHUNK = 1 << 24  # bytes per read while counting: large reads, few calls to S3


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is (a path or URI `pyarrow.fs.FileSystem.from_uri` opens),
    what it holds, and what it was when listed (a rerun must find the same)."""

    uri: str
    size: int
    mtime_ns: int | None
    kind: str  # "text" (a text a line), or "jsonl", "json", "csv", "tsv", "parquet" (records)


@dataclass(frozen=True)
class Shard:
    """Rows [row, row + rows) of the input: lines [first, first + rows) of one file, which for
    text lie in bytes [start, end) of the file (decompressed for .gz)."""

    index: int
    uri: str
    kind: str
    row: int
    first: int
    rows: int
    start: int = 0
    end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FORMAT_OF_KIND = {"text": ".txt", "jsonl": ".jsonl", "json": ".json", "csv": ".csv", "tsv": ".tsv",
                   "parquet": ".parquet"}


def file_kind(name: str) -> str:
    """What a file holds, by its name: .parquet, .jsonl, .json, .csv, .tsv (optionally .gz),
    else text lines (.txt(.gz), ...)."""
    fmt = format_of(name)
    return next((k for k, f in _FORMAT_OF_KIND.items() if f == fmt and k != "text"), "text")


def list_inputs(spec: str) -> list[InputFile]:
    """The files of `spec` (a file, a directory's files, or a glob), sorted by path, as
    `mlmkit fill --input` lists them; hidden files (names starting with . or _) of a
    directory or glob are left out, as pyarrow does."""
    return [InputFile(f.uri, f.size, f.mtime_ns, file_kind(f.uri))
            for f in list_input_files(spec)]


def count_rows(uri: str, kind: str, shard_rows: int) -> tuple[int, list[int]]:
    """(rows in the file, byte offset of each shard's first line). For text lines one pass
    over the bytes (numpy finds the newlines); for Parquet the footer alone; CSV and JSON
    records are counted by reading them. Offsets only for text lines."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        with open_binary(uri, seekable=True) as fh:
            return pq.ParquetFile(fh).metadata.num_rows, []
    if kind in ("csv", "tsv", "json"):
        return sum(1 for _ in read_entries(uri, _FORMAT_OF_KIND[kind])), []
    offsets, lines, pos, last = [0], 0, 0, b"\n"
    with open_binary(uri) as fh:
        while chunk := fh.read(_READ_CHUNK):
            nl = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
            # Shard boundaries whose line starts right after a newline of this chunk.
            first = (lines // shard_rows + 1) * shard_rows
            ks = np.arange(first, lines + len(nl) + 1, shard_rows)
            offsets.extend((pos + nl[ks - lines - 1] + 1).tolist())
            lines, pos, last = lines + len(nl), pos + len(chunk), chunk[-1:]
    if pos and last != b"\n":  # a last line without its newline is a line too
        lines += 1
    return lines, offsets[:-(-lines // shard_rows)] if lines else []


def plan_shards(files: list[InputFile], counts: list[tuple[int, list[int]]],
                shard_rows: int) -> list[Shard]:
    """The shards of `files` (in order) given `count_rows` of each: `shard_rows` rows each,
    never across two files (a file's last shard may be shorter)."""
    shards: list[Shard] = []
    row = 0
    for f, (n, offsets) in zip(files, counts):
        for k, first in enumerate(range(0, n, shard_rows)):
            rows = min(shard_rows, n - first)
            start = offsets[k] if offsets else 0
            end = offsets[k + 1] if offsets and k + 1 < len(offsets) else -1  # -1: to the end
            shards.append(Shard(len(shards), f.uri, f.kind, row + first, first, rows,
                                start, end))
        row += n
    return shards


def read_shard(shard: Shard, tally: LineTally, whole_record: bool = False,
               text_fields: list[str] | None = None
               ) -> Iterator[tuple[int, str, Any, str | None]]:
    """(row, where, item, problem) of each record of `shard`, as `mlmkit fill --input` reads
    them (blank lines counted in `tally` and skipped); `where` names the file and line (or
    Parquet row, or JSON array element) in messages, 1-based as `read_inputs` numbers them."""
    entries = _shard_entries(shard, whole_record, input_columns(text_fields, whole_record))
    for it in entry_items(entries, shard.uri, tally, text_fields, whole_record, shard.first):
        yield shard.row + it.index - shard.first, it.where, it.item, it.problem


def _shard_entries(shard: Shard, whole_record: bool, columns: list[str] | None
                   ) -> Iterator[Entry]:
    if shard.kind == "parquet":
        return parquet_entries(shard.uri, shard.first, shard.rows, columns)
    if shard.kind in ("csv", "tsv", "json"):
        # Records are found by reading from the file's start: each shard pays for those
        # before it, which text lines (byte offsets) and Parquet (row groups) do not.
        entries = read_entries(shard.uri, _FORMAT_OF_KIND[shard.kind])
        return itertools.islice(entries, shard.first, shard.first + shard.rows)
    with open_binary(shard.uri, seekable=True) as fh:
        if shard.uri.endswith(".gz"):
            _skip(fh, shard.start)  # no seeking in a gzip stream
        else:
            fh.seek(shard.start)
        data = fh.read() if shard.end < 0 else fh.read(shard.end - shard.start)
    lines = itertools.islice(iter_lines(io.BytesIO(data)), shard.rows)
    return line_entries(lines, whole_record or shard.kind == "jsonl", shard.first + 1,
                        shard.start, shard.uri.endswith(".gz"))


def _skip(fh: Any, n: int) -> None:
    while n > 0:
        got = len(fh.read(min(n, _READ_CHUNK)))
        if not got:
            break
        n -= got
