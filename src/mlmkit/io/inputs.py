"""The texts `mlmkit fill` and `mlmkit score` read (command line, stdin, or files in every
format training reads, numbered so that a bad record is reported by its place while the rest
go on) and the checks of their input and output paths before a model loads."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from mlmkit.errors import MlmkitError
from mlmkit.io.fields import FieldError, input_text
from mlmkit.io.files import probe_writable, write_target
from mlmkit.io.formats import BLANK, Entry, line_entries, read_entries
from mlmkit.io.locate import FORMATS, ListedFile, is_pattern, is_url, list_files


class LineTally:
    """What a command read: lines tried, lines that failed, blank lines."""

    def __init__(self, failed_as: str = "could not be filled") -> None:
        self.lines = self.failed = self.blank = 0
        self.failed_as = failed_as

    def summary(self) -> str | None:
        parts = []
        if self.failed:
            parts.append(f"{self.failed} of {plural(self.lines, 'line')} {self.failed_as}")
        if self.blank:
            parts.append(f"{plural(self.blank, 'blank line')} skipped")
        return "mlmkit: " + "; ".join(parts) if parts else None


def plural(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


class InputItem(NamedTuple):
    """One input where it was read: its number (line, row or record, from 1), the place for
    messages ('in.jsonl: line 3', 'in.parquet: row 7'), the text or record, or None and the
    problem that kept it from being read; and its position among its file's records (from 0,
    blank lines counted), which a CSV record's line number is not."""

    number: int
    where: str
    item: Any
    problem: str | None
    index: int = 0


def entry_items(entries: Iterable[Entry], name: str, tally: LineTally,
                text_fields: list[str] | None = None, whole_record: bool = False,
                first_index: int = 0) -> Iterator[InputItem]:
    """The inputs of a file's entries (the first at position `first_index`): the text of
    `text_fields` (default 'text'; a string record is its own text) or with `whole_record`
    the record itself; blank lines are counted in `tally` and skipped, and an unreadable
    record is a problem in its place."""
    fields = list(text_fields or ["text"])
    for i, e in enumerate(entries, first_index):
        where = f"{name}: {e.unit} {e.number}" if e.unit else name
        if e.value is BLANK:
            tally.blank += 1
        elif e.problem is not None:
            yield InputItem(e.number, where, None, e.problem.brief, i)
        elif whole_record:
            yield InputItem(e.number, where, e.value, None, i)
        else:
            try:
                yield InputItem(e.number, where, input_text(e.value, fields), None, i)
            except FieldError as err:
                yield InputItem(e.number, where, None, err.brief, i)


def numbered_lines(lines: Iterable[bytes | str], jsonl: bool, tally: LineTally,
                   whole_record: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, text, problem) for each non-blank line of .txt (a text a line) or .jsonl
    ('text' field; with `whole_record`, the parsed record itself) input, as `read_inputs`
    gives them."""
    for n, _, item, problem, _ in entry_items(line_entries(lines, jsonl), "", tally,
                                              whole_record=whole_record):
        yield n, item, problem


def _stdin_lines() -> Iterable[bytes | str]:
    if sys.stdin.isatty():
        print("mlmkit: reading texts from stdin, one a line; end with Ctrl-D", file=sys.stderr)
    return getattr(sys.stdin, "buffer", sys.stdin)


def list_input_files(input_path: str) -> list[ListedFile]:
    """The files `mlmkit fill/score --input` reads, locally or with --engine ray alike: the
    file itself (any name; text lines unless it says .jsonl, .json, .csv or .parquet), a
    directory's files, or a glob's."""
    return list_files(input_path, recursive=False, known_only=False)


def input_columns(text_fields: list[str] | None, whole_record: bool) -> list[str] | None:
    """The top-level columns that hold the text (all, for whole records): what Parquet reads."""
    return None if whole_record else [f.split(".", 1)[0] for f in text_fields or ["text"]]


def iter_inputs(texts: list[str], input_path: str | None, tally: LineTally,
                jsonl: bool | None = None, whole_record: bool = False,
                text_fields: list[str] | None = None) -> Iterator[InputItem]:
    """Each input with its place: the command line's `texts`, or the records of the files of
    `input_path` (a file, directory or glob, in any format training reads) or the lines of
    stdin (without texts, with '-', or with an input of '-'). `jsonl`: whether text lines are
    JSON (default: by the file's name; stdin is text). `text_fields`: dotted fields holding
    the text, joined with a space (default 'text')."""
    texts = [t for t in texts if t != "-"]
    if input_path in (None, "-") and not texts:
        yield from entry_items(line_entries(_stdin_lines(), bool(jsonl)), "stdin", tally,
                               text_fields, whole_record)
        return
    if input_path is None:
        yield from (InputItem(i, f"text {i}", t, None) for i, t in enumerate(texts, 1))
        return
    itself = (input_path, os.path.abspath(os.path.expanduser(input_path)))
    columns = input_columns(text_fields, whole_record)
    for f in list_input_files(input_path):
        fmt = f.fmt or ".txt"
        if jsonl is not None and fmt in (".txt", ".jsonl"):
            fmt = ".jsonl" if jsonl else ".txt"
        # A file named itself is named as given; one of a directory or glob by its path.
        name = input_path if f.uri in itself else f.uri
        yield from entry_items(read_entries(f.uri, fmt, columns), name, tally, text_fields,
                               whole_record)


def read_inputs(texts: list[str], input_path: str | None, tally: LineTally,
                jsonl: bool | None = None, whole_record: bool = False,
                text_fields: list[str] | None = None
                ) -> Iterator[tuple[int, Any, str | None]]:
    """(number, text, problem) of each input, as `iter_inputs` reads them; the number is the
    line (row of Parquet, element of a JSON array) in its own file."""
    for n, _, item, problem, _ in iter_inputs(texts, input_path, tally, jsonl, whole_record,
                                              text_fields):
        yield n, item, problem


def input_name(input_path: str | None) -> str:
    return "stdin" if input_path in (None, "-") else input_path


def check_io_paths(texts: list[str], input_path: str | None, output: str | None) -> None:
    """Before the model loads: the input exists, and the output can be written (a file, a
    character device, a FIFO or '-' for stdout) and is not a file being read: the --input's
    files or the file on stdin, compared as files, so another spelling or a link counts too."""
    if input_path is not None and any(t != "-" for t in texts):
        raise MlmkitError("--input: given along with texts on the command line; expected one "
                          "or the other")
    reading = input_path not in (None, "-")
    expected = (f"expected a file of texts ({', '.join(FORMATS)}, optionally .gz), a glob, or - "
                "for stdin")
    if reading and Path(input_path).is_dir():
        # `read_inputs` reads directories; the command asks for a glob, which says which files.
        raise MlmkitError(f"--input {input_path}: is a directory; {expected} (such as "
                          f"'{Path(input_path) / '*.jsonl'}')")
    if reading and not is_url(input_path) and not is_pattern(input_path) \
            and not Path(input_path).exists():  # /dev/stdin and other pipes are welcome
        raise MlmkitError(f"--input {input_path}: file not found; {expected}")
    inputs = list_input_files(input_path) if reading else []
    if not output or output == "-":
        return
    out = Path(output)
    if out.is_dir():
        raise MlmkitError(f"--output {out}: is a directory; expected a file name")
    target = Path(os.path.realpath(out))
    if os.path.lexists(out):
        target, atomic = write_target(out, "--output")  # refuses sockets, block devices
        _refuse_reading(out, inputs, stdin=not reading and not any(t != "-" for t in texts))
        if not atomic:  # a device, FIFO or descriptor: written into, nothing made beside it
            return
    probe_writable(target.parent, "--output", shown=out)
    if not target.parent.is_dir():
        raise MlmkitError(f"--output {out}: directory {out.parent} does not exist; expected a "
                          "file in an existing directory")


def _refuse_reading(out: Path, inputs: list[ListedFile], stdin: bool) -> None:
    """Refuse an --output that is a regular file the command reads: one of `inputs`, or (when
    `stdin` is read) the file on stdin, as `< in.txt` gives it."""
    try:
        st = os.stat(out)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return  # writing /dev/null or a FIFO destroys nothing read
    if any(not is_url(f.uri) and os.path.samefile(f.uri, out) for f in inputs):
        raise MlmkitError(f"--output {out}: is the --input file; writing it would destroy the "
                          "texts being read; choose another output file")
    try:
        on_stdin = os.fstat(0) if stdin else None
    except OSError:  # no stdin at all
        on_stdin = None
    if on_stdin is not None and (on_stdin.st_dev, on_stdin.st_ino) == (st.st_dev, st.st_ino):
        raise MlmkitError(f"--output {out}: is the file on stdin; writing it would destroy the "
                          "texts being read; choose another output file")
