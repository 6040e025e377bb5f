"""Read the probes' input files record by record (JSON lines, CSV or TSV, optionally gzipped),
each with the line it starts on, so that a bad record is named by file and line and the rest
go on."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import MlmkitError

# An error in place of a record: the line it came from and the message (file:line: ...).
Record = tuple[int, "dict[str, Any] | MlmkitError"]


def _format(path: Path) -> str:
    """'csv', 'tsv' or 'jsonl', from the name with any .gz taken off."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    return "jsonl"


def _open(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise MlmkitError(f"{path}: no such file; expected a JSON lines, CSV or TSV file "
                          "(optionally .gz)")
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # by content: a .gz name is not required
    raw = gzip.open(path, "rb") if gz else path.open("rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_records(path: str | Path) -> Iterator[Record]:
    """(line, record) for each record of `path`; a record that cannot be parsed is an
    `MlmkitError` naming file and line in its place. A file that cannot be read at all (no such
    file, not UTF-8, a truncated gzip stream) raises."""
    path = Path(path)
    fmt = _format(path)
    try:
        with _open(path) as fh:
            if fmt == "jsonl":
                yield from _json_lines(path, fh)
            else:
                yield from _table(path, fh, "," if fmt == "csv" else "\t")
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, csv.Error) as e:
        raise MlmkitError(f"{path}: cannot be read to the end ({type(e).__name__}: "
                          f"{str(e)[:80]}); expected UTF-8 text, gzipped or not") from None


def _json_lines(path: Path, fh: io.TextIOBase) -> Iterator[Record]:
    for line_no, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_no, MlmkitError(f"{path}:{line_no}: not JSON ({e.msg} at column "
                                       f"{e.colno}); expected one JSON object a line")
            continue
        if not isinstance(rec, dict):
            yield line_no, MlmkitError(f"{path}:{line_no}: a JSON {type(rec).__name__}; "
                                       "expected a JSON object")
        else:
            yield line_no, rec


def _table(path: Path, fh: io.TextIOBase, delimiter: str) -> Iterator[Record]:
    reader = csv.DictReader(fh, delimiter=delimiter)
    if reader.fieldnames is None:  # reads the header, so that line_num counts it
        return
    start = reader.line_num + 1
    for row in reader:
        # A quoted field may span lines: the record is named by the line it starts on.
        if None in row or None in row.values():
            yield start, MlmkitError(f"{path}:{start}: not as many columns as the header's "
                                     f"{len(reader.fieldnames or [])}")
        else:
            yield start, row
        start = reader.line_num + 1


def text_field(rec: dict[str, Any], name: str, where: str) -> str:
    """`rec[name]` as a non-empty string, or an error naming `where` (file:line) and the
    field."""
    value = rec.get(name)
    if value is None:
        raise MlmkitError(f"{where}: no field {name!r}; expected a string (fields here: "
                          f"{', '.join(sorted(rec))[:120]})")
    if not isinstance(value, str) or not value.strip():
        raise MlmkitError(f"{where}: field {name!r}: {str(value)[:40]!r}; expected a "
                          "non-empty string")
    return value


def group_of(rec: dict[str, Any], name: str | None) -> str:
    """The record's group for the per-group results: its `name` field as a string, or
    '(none)' when there is no such field (counted by the caller)."""
    value = rec.get(name) if name else None
    return "(none)" if value is None or value == "" else str(value)


def first_fields(path: str | Path) -> set[str]:
    """The fields of the first record that parses, for guessing the task of a file."""
    for _, rec in read_records(path):
        if isinstance(rec, dict):
            return set(rec)
    raise MlmkitError(f"{path}: no record could be read; expected JSON lines or a CSV/TSV "
                      "file with a header")
