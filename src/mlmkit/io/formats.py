"""The records of one file in each format mlmkit reads (.txt, .jsonl, a .json array or JSON
lines, .csv, .parquet; all but Parquet optionally .gz), each with its place in the file.

A record that cannot be read (not UTF-8, invalid JSON) comes as an `Entry` with a problem in
its place, so that whoever reads decides: training stops at it with the whole story, fill and
score report it and go on. Lines are split on bytes and decoded one by one, which is what lets
a bad byte name its line, column and offset without reading the file twice.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from mlmkit.errors import MlmkitError
from mlmkit.io.locate import format_of, open_binary

_CHUNK = 1 << 20  # bytes a read: few calls to remote filesystems, small buffers
BLANK = type("Blank", (), {"__repr__": lambda self: "BLANK"})()  # a line of whitespace


@dataclass(frozen=True)
class Problem:
    """Why a record cannot be read: `brief` for a report beside the others ('file: line n:'
    comes in front), `detail` for an error that stops a run (the place comes in front)."""

    brief: str
    detail: str


class Entry(NamedTuple):
    """One record where it is: `unit` 'line', 'row' (Parquet) or 'record' (a JSON array's
    element), `number` from 1; `value` the record (a line's text for .txt, parsed JSON, a
    row as a dict) or BLANK, None when `problem` says why not. A problem of the whole file
    (a JSON array cut short) has unit '' and names the file itself."""

    number: int
    unit: str
    value: Any
    problem: Problem | None = None


def iter_lines(fh: BinaryIO, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The lines of a binary stream with their b'\\n' (the last one may lack it), read in large
    chunks from any file object, pyarrow's streams included."""
    tail: list[bytes] = []
    while data := fh.read(chunk):
        parts = data.split(b"\n")
        if len(parts) == 1:
            tail.append(data)
            continue
        tail.append(parts[0])
        yield b"".join(tail) + b"\n"
        for p in parts[1:-1]:
            yield p + b"\n"
        tail = [parts[-1]] if parts[-1] else []
    if tail:
        yield b"".join(tail)


def not_utf8(raw: bytes, e: UnicodeDecodeError, lineno: int, offset: int, gz: bool) -> Problem:
    """Where a line's first invalid UTF-8 byte is: its column, and its offset in the file
    (`offset` is the line's)."""
    where = f"offset {offset + e.start:,}" + (" of the decompressed data" if gz else "")
    utf16 = lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    hint = " (it looks like UTF-16)" if utf16 else ""
    return Problem(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                   "expected UTF-8",
                   f"byte {raw[e.start]:#04x} at {where} is not UTF-8; expected UTF-8 text{hint}")


def line_entries(lines: Iterable[bytes | str], as_json: bool, first: int = 1, offset: int = 0,
                 gz: bool = False) -> Iterator[Entry]:
    """An entry for each line (bytes from a file, or str from a text stream), numbered from
    `first`, whose bytes start at `offset`: the text itself, or with `as_json` the parsed JSON;
    BLANK for a line of whitespace."""
    for n, raw in enumerate(lines, first):
        line = raw
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Entry(n, "line", None, not_utf8(raw, e, n, offset, gz))
                offset += len(raw)
                continue
            offset += len(raw)
        line = line.rstrip("\r\n")
        if not line.strip():
            yield Entry(n, "line", BLANK)
        elif not as_json:
            yield Entry(n, "line", line)
        else:
            try:
                yield Entry(n, "line", json.loads(line))
            except json.JSONDecodeError as e:
                yield Entry(n, "line", None, Problem(
                    f"invalid JSON ({e.msg})",
                    f"invalid JSON ({e.msg}); expected one JSON object per line"))


def csv_entries(fh: BinaryIO, gz: bool = False, delimiter: str = ",") -> Iterator[Entry]:
    """A dict per CSV record (TSV with `delimiter` tab) under its header's names, numbered by
    its first line (a quoted field may hold newlines); a record with a line that is not UTF-8
    is a problem."""
    bad: dict[int, Problem] = {}  # lines that are not UTF-8, by number
    read = 0

    def text_lines() -> Iterator[str]:
        nonlocal read
        offset = 0
        for raw in iter_lines(fh):
            read += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad[read] = not_utf8(raw, e, read, offset, gz)
                yield raw.decode("utf-8", "replace")
            offset += len(raw)

    reader = csv.DictReader(text_lines(), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Entry(start, "line", None, Problem(f"invalid CSV ({e})", f"invalid CSV ({e})"))
            continue
        start = max(start, 2)  # the header was read with the first record
        spoilt = sorted(i for i in bad if i <= reader.line_num)
        if spoilt:
            n = spoilt[0]
            problem = bad[n]
            for i in spoilt:
                del bad[i]
            yield Entry(n, "line", None, problem)
        else:
            yield Entry(start, "line", rec)


def iter_json_array(fh: io.TextIOBase, name: str, chunk: int = _CHUNK) -> Iterator[Any]:
    """The elements of a top-level JSON array (its '[' already read), decoded one at a time from
    a buffer of about one element plus `chunk` characters: a corpus stored as one multi-GB array
    never sits in memory whole, which `json.load` would need."""
    decoder = json.JSONDecoder()
    buf, pos, eof, n = "", 0, False, 0

    def more() -> None:
        nonlocal buf, pos, eof
        data = fh.read(chunk)
        eof = not data
        buf, pos = buf[pos:] + data, 0

    def next_char() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos].isspace():
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if eof:
                raise MlmkitError(f"{name}: the JSON array ends after element {n} without ']'")
            more()

    if next_char() == "]":
        return
    while True:
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:  # a number at the buffer's end may continue
                    break
            except json.JSONDecodeError as e:
                if eof:
                    raise MlmkitError(f"{name}: element {n + 1} of the JSON array: invalid JSON "
                                      f"({e.msg})") from None
            more()
        pos, n = end, n + 1
        yield value
        c = next_char()
        pos += 1
        if c == "]":
            return
        if c != ",":
            raise MlmkitError(f"{name}: after element {n} of the JSON array: expected ',' or "
                              f"']', found {c!r}")
        next_char()


def _json_entries(uri: str, gz: bool) -> Iterator[Entry]:
    """A .json file: the elements of one top-level array, or else JSON lines."""
    with open_binary(uri) as fh:
        head = fh.read(4096).lstrip()
        while not head and (more := fh.read(4096)):
            head = more.lstrip()
    if not head.startswith(b"["):
        with open_binary(uri) as fh:
            yield from line_entries(iter_lines(fh), as_json=True, gz=gz)
        return
    n = 0
    try:
        with open_binary(uri) as raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
            while fh.read(1) != "[":
                pass
            for n, value in enumerate(iter_json_array(fh, uri), 1):
                yield Entry(n, "record", value)
    except MlmkitError as e:  # the array is broken: nothing after this point can be read
        msg = str(e)
        yield Entry(n + 1, "", None, Problem(msg[len(uri) + 2:], msg))
    except UnicodeDecodeError:
        # Where, by line: decoded again line by line, a cost only this error path pays.
        with open_binary(uri) as fh:
            for e in line_entries(iter_lines(fh), as_json=False, gz=gz):
                if e.problem is not None:
                    yield e
                    return


def parquet_entries(uri: str, first: int = 0, rows: int | None = None,
                    columns: list[str] | None = None) -> Iterator[Entry]:
    """Rows [first, first + rows) of a Parquet file as dicts, reading only the row groups
    that hold them (and with `columns`, only those of the columns that exist)."""
    import numpy as np
    import pyarrow.parquet as pq

    with open_binary(uri, seekable=True) as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        end = meta.num_rows if rows is None else min(first + rows, meta.num_rows)
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        if columns is not None:
            columns = [c for c in columns if c in pf.schema_arrow.names] or None
        n = first
        for g in range(meta.num_row_groups):
            if starts[g + 1] <= first or starts[g] >= end:
                continue
            table = pf.read_row_group(g, columns=columns)
            lo, hi = max(first, int(starts[g])), min(end, int(starts[g + 1]))
            for rec in table.slice(lo - int(starts[g]), hi - lo).to_pylist():
                n += 1
                yield Entry(n, "row", rec)


def read_entries(uri: str, fmt: str | None = None, columns: list[str] | None = None
                 ) -> Iterator[Entry]:
    """Every entry of a file, in order; `fmt` defaults to what its name says, text lines when
    it says nothing. A file that cannot be read at all is an `MlmkitError` naming it."""
    fmt = fmt if fmt is not None else format_of(uri) or ".txt"
    gz = uri.lower().endswith(".gz")
    try:
        if fmt == ".parquet":
            yield from parquet_entries(uri, columns=columns)
        elif fmt == ".json":
            yield from _json_entries(uri, gz)
        else:
            with open_binary(uri) as fh:
                if fmt in (".csv", ".tsv"):
                    yield from csv_entries(fh, gz, "\t" if fmt == ".tsv" else ",")
                else:
                    yield from line_entries(iter_lines(fh), fmt == ".jsonl", gz=gz)
    except MlmkitError:
        raise
    except (OSError, EOFError) as e:
        raise MlmkitError(f"{uri}: cannot read: {e}") from None
    except Exception as e:  # pyarrow and friends: still one line, naming the file
        raise MlmkitError(f"{uri}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
