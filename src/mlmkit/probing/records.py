"""The probes' records, read by mlmkit's one reader (`io.formats`): JSON lines, a JSON array,
CSV, TSV or Parquet, optionally gzipped; each record with its number, so that a bad record is
named by file and line (row of Parquet) and the rest go on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.formats import BLANK, read_entries
from mlmkit.io.locate import format_of

# An error in place of a record: its number and the message (file: line n: ...).
Record = tuple[int, "dict[str, Any] | MlmkitError"]
_UNITS = {".parquet": "row", ".json": "record"}


def place(path: str | Path, number: int) -> str:
    """Where record `number` of `path` is, for messages: 'pairs.jsonl: line 7'."""
    return f"{path}: {_UNITS.get(format_of(str(path)), 'line')} {number}"


def read_records(path: str | Path) -> Iterator[Record]:
    """(number, record) for each record of `path` (a name without a known format is read as
    JSON lines); a record that cannot be parsed, or is not an object, or has fewer columns than
    the CSV header, is an `MlmkitError` naming file and line in its place. A file that cannot
    be read at all raises."""
    path = str(path)
    if not Path(path).is_file():
        raise MlmkitError(f"{path}: no such file; expected JSON lines, a JSON array, CSV, TSV "
                          "or Parquet (optionally .gz)")
    fmt = format_of(path) or ".jsonl"
    table = fmt in (".csv", ".tsv")
    for e in read_entries(path, fmt):
        if e.value is BLANK:
            continue
        if e.problem is not None:
            yield e.number, MlmkitError(f"{place(path, e.number)}: {e.problem.brief}")
        elif not isinstance(e.value, dict):
            yield e.number, MlmkitError(f"{place(path, e.number)}: a JSON "
                                        f"{type(e.value).__name__}; expected a JSON object")
        elif table and (None in e.value or None in e.value.values()):  # short or long rows
            yield e.number, MlmkitError(f"{place(path, e.number)}: not as many columns as the "
                                        "header's")
        else:
            yield e.number, e.value
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
