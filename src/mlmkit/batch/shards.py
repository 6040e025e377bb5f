"""The input of a batch job (`mlmkit fill/score --engine ray`): files named by a path, a
directory or a glob on any filesystem pyarrow reads (local, s3://, gs://, hdfs://), counted and
cut into shards of a fixed number of rows, and each shard's records read back by row number.

The cut depends only on the files' contents and the shard size, so a rerun of a killed job gets
the same shards and can skip the finished ones. Rows are lines (blank ones included, so a row
is a position, not a parse) or Parquet rows, numbered from 0 across the files in sorted order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlmkit.errors import MlmkitError
from mlmkit.io.inputs import LineTally, numbered_lines

_READ_CHUNK = 1 << 24  # bytes per read while counting: large reads, few calls to S3


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is (a path or URI `pyarrow.fs.FileSystem.from_uri` opens),
    what it holds, and what it was when listed (a rerun must find the same)."""

    uri: str
    size: int
    mtime_ns: int | None
    kind: str  # "text" (a text a line), "jsonl" ('text' field) or "parquet" ('text' column)


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


def file_kind(name: str) -> str:
    """What a file holds, by its name: .parquet, .jsonl(.gz), else text lines (.txt(.gz), ...)."""
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith(".parquet"):
        return "parquet"
    return "jsonl" if base.endswith(".jsonl") else "text"


def _filesystem(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    if "://" not in uri:
        uri = str(Path(uri).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... by filesystem
        raise MlmkitError(f"--input {uri}: cannot open its filesystem ({e})") from None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` within one path segment, `**` across segments (as the shell's globstar)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            out.append(pattern[i:j + 1])
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def list_inputs(spec: str) -> list[InputFile]:
    """The files of `spec` (a file, a directory's files, or a glob), sorted by path; hidden
    files (names starting with . or _) of a directory or glob are left out, as pyarrow does."""
    from pyarrow import fs as pafs

    fs, path = _filesystem(spec)
    scheme = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    wild = next((i for i, c in enumerate(path) if c in "*?["), None)
    if wild is None:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise MlmkitError(f"--input {spec}: not found; expected a file, a directory or a "
                              "glob of .txt, .jsonl or .parquet files")
        if info.type == pafs.FileType.File:  # named itself: taken even if hidden
            return [InputFile(scheme + info.path, info.size, info.mtime_ns,
                              file_kind(info.base_name))]
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    else:
        base = path[:path.rfind("/", 0, wild) + 1] or "/"
        match = _glob_regex(path)
        infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                                allow_not_found=True))
                 if match.match(i.path)]
    files = [InputFile(scheme + i.path, i.size, i.mtime_ns, file_kind(i.base_name))
             for i in infos
             if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
    if not files:
        raise MlmkitError(f"--input {spec}: no files match; expected a file, a directory or a "
                          "glob of .txt, .jsonl or .parquet files")
    return sorted(files, key=lambda f: f.uri)


def _open_bytes(uri: str, seekable: bool = False) -> Any:
    """The file's bytes, decompressed for .gz (which cannot seek)."""
    fs, path = _filesystem(uri)
    if uri.endswith(".gz"):
        return fs.open_input_stream(path, compression="gzip")
    return fs.open_input_file(path) if seekable else fs.open_input_stream(path)


def count_rows(uri: str, kind: str, shard_rows: int) -> tuple[int, list[int]]:
    """(rows in the file, byte offset of each shard's first line). One pass over the bytes
    (numpy finds the newlines); for Parquet the footer alone, offsets empty."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        fs, path = _filesystem(uri)
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh).metadata.num_rows, []
    offsets, lines, pos, last = [0], 0, 0, b"\n"
    with _open_bytes(uri) as fh:
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


def read_shard(shard: Shard, tally: LineTally, whole_record: bool = False
               ) -> Iterator[tuple[int, str, Any, str | None]]:
    """(row, where, item, problem) of each record of `shard`, as `numbered_lines` gives them
    (blank lines counted in `tally` and skipped); `where` names the file and line (or Parquet
    row) in messages, 1-based as `mlmkit fill --input` numbers lines."""
    if shard.kind == "parquet":
        yield from _parquet_rows(shard, whole_record)
        return
    with _open_bytes(shard.uri, seekable=True) as fh:
        if shard.uri.endswith(".gz"):
            _skip(fh, shard.start)  # no seeking in a gzip stream
        else:
            fh.seek(shard.start)
        data = fh.read() if shard.end < 0 else fh.read(shard.end - shard.start)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    jsonl = whole_record or shard.kind == "jsonl"
    for n, item, problem in numbered_lines(lines[:shard.rows], jsonl, tally, whole_record):
        yield shard.row + n - 1, f"{shard.uri}: line {shard.first + n}", item, problem


def _skip(fh: Any, n: int) -> None:
    while n > 0:
        got = len(fh.read(min(n, _READ_CHUNK)))
        if not got:
            break
        n -= got


def _parquet_rows(shard: Shard, whole_record: bool
                  ) -> Iterator[tuple[int, str, Any, str | None]]:
    import pyarrow.parquet as pq

    fs, path = _filesystem(shard.uri)
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        end = shard.first + shard.rows
        groups = [i for i in range(meta.num_row_groups)
                  if starts[i] < end and starts[i + 1] > shard.first]
        columns = None if whole_record or "text" not in pf.schema_arrow.names else ["text"]
        table = pf.read_row_groups(groups, columns=columns)
    first = shard.first - int(starts[groups[0]]) if groups else 0
    records = table.slice(first, shard.rows).to_pylist()
    for j, rec in enumerate(records):
        where = f"{shard.uri}: row {shard.first + j + 1}"
        row = shard.row + j
        if whole_record:
            yield row, where, rec, None
        elif "text" not in rec:
            yield row, where, None, "no 'text' column"
        elif not isinstance(rec["text"], str):
            yield row, where, None, f"the text is not a string but {type(rec['text']).__name__}"
        else:
            yield row, where, rec["text"], None
