"""`mlmkit fill/score --input` reads every format training reads (txt, jsonl, a JSON array,
csv, parquet, .gz, a directory, a glob, dotted fields) with each record's own number, a bad
record a problem in its place while the rest go on, and globs and URLs pass the path checks."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest

from mlmkit.errors import MlmkitError
from mlmkit.io.inputs import LineTally, check_io_paths, iter_inputs, read_inputs

TEXTS = ["The sun is a <mask> star.", "Why is the <mask> blue?", "caf\u00e9, \"quoted\" <mask>"]


def write_csv(path, rows, fieldnames, opener=open):
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)


def write_input(tmp_path, kind):
    """The file (or directory, or glob) of `kind` holding TEXTS, the text fields to read them
    with, and the number each text must come with."""
    recs = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    jsonl = "".join(json.dumps(r) + "\n" for r in recs)
    if kind in ("txt", "txt.gz"):
        data = ("\n".join([TEXTS[0], "", TEXTS[1], TEXTS[2]]) + "\n").encode()
        path = tmp_path / f"in.{kind}"
        path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
        return str(path), None, [1, 3, 4]
    if kind in ("jsonl", "jsonl.gz"):
        data = (jsonl.replace("\n", "\n\n", 1)).encode()  # a blank line after the first
        path = tmp_path / f"in.{kind}"
        path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
        return str(path), None, [1, 3, 4]
    if kind in ("json", "json.gz"):
        data = json.dumps(recs, indent=2).encode()
        path = tmp_path / f"in.{kind}"
        path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
        return str(path), None, [1, 2, 3]
    if kind in ("csv", "csv.gz"):
        rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
        rows[0]["text"] = TEXTS[0].replace("sun is", "sun\nis")  # a quoted newline: 2 lines
        path = tmp_path / f"in.{kind}"
        write_csv(path, rows, ["id", "text"], gzip.open if kind.endswith(".gz") else open)
        return str(path), None, [2, 4, 5]
    if kind == "parquet":
        write_parquet(tmp_path / "in.parquet", recs)
        return str(tmp_path / "in.parquet"), None, [1, 2, 3]
    if kind in ("directory", "glob"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "a.txt").write_text(TEXTS[0] + "\n")
        write_parquet(tmp_path / "d" / "b.parquet", recs[1:])
        (tmp_path / "d" / "_SUCCESS").write_text("")  # hidden: left out
        spec = tmp_path / "d" if kind == "directory" else tmp_path / "d" / "*"
        return str(spec), None, [1, 1, 2]
    assert kind == "dotted"
    nested = [{"q": {"parts": [{"t": w} for w in t.split(" ", 1)]}} for t in TEXTS]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in nested))
    return str(tmp_path / "in.jsonl"), ["q.parts.t"], [1, 2, 3]


KINDS = ["txt", "txt.gz", "jsonl", "jsonl.gz", "json", "json.gz", "csv", "csv.gz", "parquet",
         "directory", "glob", "dotted"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_reads_the_same_texts_with_their_own_numbers(tmp_path, kind):
    spec, fields, numbers = write_input(tmp_path, kind)
    tally = LineTally()
    got = list(read_inputs([], spec, tally, text_fields=fields))
    want = list(TEXTS)
    if kind == "csv" or kind == "csv.gz":
        want[0] = TEXTS[0].replace("sun is", "sun\nis")
    assert got == [(n, t, None) for n, t in zip(numbers, want)]
    assert tally.blank == (1 if kind.startswith(("txt", "jsonl")) else 0)
    check_io_paths([], spec if kind != "directory" else f"{spec}/*", None)


def test_places_name_the_file_and_unit(tmp_path):
    spec, _, _ = write_input(tmp_path, "glob")
    wheres = [it.where for it in iter_inputs([], spec, LineTally())]
    d = tmp_path / "d"
    assert wheres == [f"{d}/a.txt: line 1", f"{d}/b.parquet: row 1", f"{d}/b.parquet: row 2"]
    spec, _, _ = write_input(tmp_path, "json")
    assert [it.where for it in iter_inputs([], spec, LineTally())][-1] == f"{spec}: record 3"


# Each: a file with one bad record (the second) between good ones, and the problem it gives.
BAD = {
    "txt": (b"a <mask>\nb\xff <mask>\nc <mask>\n", 2,
            "not UTF-8 text (byte 0xff at column 2); expected UTF-8"),
    "jsonl": (b'{"text": "a <mask>"}\n{"text": "b\n{"text": "c <mask>"}\n', 2,
              "invalid JSON (Unterminated string starting at)"),
    "jsonl-field": (b'{"text": "a <mask>"}\n{"body": "b"}\n{"text": "c <mask>"}\n', 2,
                    "no 'text' field"),
    "jsonl-type": (b'{"text": "a <mask>"}\n{"text": [1]}\n{"text": "c <mask>"}\n', 2,
                   "the text is not a string but list"),
    "json": (b'[{"text": "a <mask>"}, {"text": 7}, {"text": "c <mask>"}]', 2,
             "the text is not a string but int"),
    "csv": (b"text\na <mask>\nb\xff <mask>\nc <mask>\n", 3,
            "not UTF-8 text (byte 0xff at column 2); expected UTF-8"),
    "parquet": ([{"text": "a <mask>"}, {"text": None}, {"text": "c <mask>"}], 2,
                "the text is not a string but NoneType"),
}


@pytest.mark.parametrize("kind,gz", [(k, gz) for k in BAD for gz in (False, True)
                                     if not (k == "parquet" and gz)])  # Parquet compresses itself
def test_a_bad_record_is_a_problem_in_its_place_and_the_rest_go_on(tmp_path, kind, gz):
    data, number, problem = BAD[kind]
    suffix = kind.split("-")[0]
    path = tmp_path / f"in.{suffix}{'.gz' if gz else ''}"
    if suffix == "parquet":
        write_parquet(path, data)
    else:
        path.write_bytes(gzip.compress(data) if gz else data)
    got = list(read_inputs([], str(path), LineTally()))
    assert [item for _, item, _ in got] == ["a <mask>", None, "c <mask>"]
    n, _, why = got[1]
    assert n == number and why.startswith(problem.split(" starting")[0])


def test_only_unreadable_lines_still_give_a_problem_each(tmp_path):
    """The reader's half of `printf '\\xff\\n' > x.txt; mlmkit fill M --input x.txt`."""
    (tmp_path / "x.txt").write_bytes(b"\xff\n\xfe\n")
    got = list(read_inputs([], str(tmp_path / "x.txt"), LineTally()))
    assert [(n, item) for n, item, _ in got] == [(1, None), (2, None)]
    assert all(p.startswith("not UTF-8 text") for _, _, p in got)


def test_a_broken_json_array_gives_its_good_records_then_one_problem(tmp_path):
    (tmp_path / "a.json").write_text('[{"text": "a <mask>"}, {"text": "b"} {"text": "c"}]')
    got = list(read_inputs([], str(tmp_path / "a.json"), LineTally()))
    assert got[:2] == [(1, "a <mask>", None), (2, "b", None)]
    assert got[2][:2] == (3, None) and "after element 2 of the JSON array" in got[2][2]
    assert len(got) == 3


def test_stdin_dash_and_whole_records_as_before(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "a"}\n\n{"n": [1]}\n'))
    assert list(read_inputs(["-"], None, LineTally(), jsonl=True, whole_record=True)) == [
        (1, {"text": "a"}, None), (3, {"n": [1]}, None)]
    rows = [{"text": "a", "hyps": "x"}]
    write_parquet(tmp_path / "r.parquet", rows)
    assert list(read_inputs([], str(tmp_path / "r.parquet"), LineTally(),
                            whole_record=True)) == [(1, rows[0], None)]


def test_path_checks_take_globs_and_refuse_what_cannot_be_read(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(MlmkitError, match=r"--input .*\*\.csv: no files match"):
        check_io_paths([], str(tmp_path / "*.csv"), None)
    with pytest.raises(MlmkitError, match=r"is a directory; expected a file of texts .*glob"):
        check_io_paths([], str(tmp_path), None)
    with pytest.raises(MlmkitError, match="is the --input file"):
        check_io_paths([], str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl"))
    check_io_paths([], str(tmp_path / "*.jsonl"), str(tmp_path / "out.jsonl"))
