"""The texts `mlmkit fill` and `mlmkit score` read (command line, stdin, .txt or .jsonl files,
numbered so that a bad line is reported by its number while the rest go on) and the checks
of their input and output paths before a model loads."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlmkit.errors import MlmkitError
from mlmkit.io.files import probe_writable


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


def numbered_lines(lines: Iterable[bytes | str], jsonl: bool, tally: LineTally,
                   whole_record: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, text, problem) for each non-blank line of .txt (a text a line) or .jsonl
    ('text' field; with `whole_record`, the parsed record itself) input; a line that cannot be
    read has no text but a problem, so that it becomes an error in its place and the other
    lines still go on. Blank lines are counted in `tally` and skipped."""
    for n, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):  # bytes: a line that is not UTF-8 must not stop the rest
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, None, (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); expected UTF-8")
                continue
        line = raw.rstrip("\r\n")
        if not line.strip():
            tally.blank += 1
        elif not jsonl:
            yield n, line, None
        else:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON ({e.msg})"
                continue
            if whole_record:
                yield n, rec, None
                continue
            text = rec.get("text") if isinstance(rec, dict) else rec
            if isinstance(text, str):
                yield n, text, None
            elif isinstance(rec, dict) and "text" not in rec:
                yield n, None, "no 'text' field"
            else:
                yield n, None, f"the text is not a string but {type(text).__name__}"


def _stdin_lines() -> Iterable[bytes | str]:
    if sys.stdin.isatty():
        print("mlmkit: reading texts from stdin, one a line; end with Ctrl-D", file=sys.stderr)
    return getattr(sys.stdin, "buffer", sys.stdin)


def read_inputs(texts: list[str], input_path: str | None, tally: LineTally,
                jsonl: bool | None = None, whole_record: bool = False
                ) -> Iterator[tuple[int, Any, str | None]]:
    """(number, text, problem) of each text: the command line's `texts`, or the lines of
    `input_path` or of stdin (without texts, with '-', or with an input of '-'). `jsonl`:
    whether lines are JSON (default: a .jsonl input file)."""
    texts = [t for t in texts if t != "-"]
    if input_path in (None, "-") and not texts:
        yield from numbered_lines(_stdin_lines(), bool(jsonl), tally, whole_record)
    elif input_path is None:
        yield from ((i, t, None) for i, t in enumerate(texts, 1))
    else:
        as_json = Path(input_path).suffix == ".jsonl" if jsonl is None else jsonl
        with open(input_path, "rb") as fh:
            yield from numbered_lines(fh, as_json, tally, whole_record)


def input_name(input_path: str | None) -> str:
    return "stdin" if input_path in (None, "-") else input_path


def check_io_paths(texts: list[str], input_path: str | None, output: str | None) -> None:
    """Before the model loads: the input exists, and the output can be written and is not
    the input (compared as files, so another spelling or a link of the input counts too)."""
    if input_path is not None and any(t != "-" for t in texts):
        raise MlmkitError("--input: given along with texts on the command line; expected one "
                          "or the other")
    reading = input_path not in (None, "-")
    if reading and Path(input_path).is_dir():
        raise MlmkitError(f"--input {input_path}: is a directory; expected a .txt or .jsonl "
                          "file, or - for stdin")
    if reading and not Path(input_path).exists():  # /dev/stdin and other pipes are welcome
        raise MlmkitError(f"--input {input_path}: file not found; expected a .txt or .jsonl "
                          "file, or - for stdin")
    if not output:
        return
    out = Path(output)
    if out.is_dir():
        raise MlmkitError(f"--output {out}: is a directory; expected a file name")
    if reading and out.exists() and os.path.samefile(input_path, out):
        raise MlmkitError(f"--output {out}: is the --input file; writing it would destroy the "
                          "texts being read; choose another output file")
    probe_writable(out.parent, "--output", shown=out)
    if not out.parent.is_dir():
        raise MlmkitError(f"--output {out}: directory {out.parent} does not exist; expected a "
                          "file in an existing directory")
