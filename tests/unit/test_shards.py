"""Shards read back every record of their files exactly once, with the row numbers, line numbers,
texts and problems `mlmkit fill --input` reads, whatever the shard size, compression, file
kind or read-chunk boundaries; globs list files as the shell would."""

from __future__ import annotations

import gzip
import io
import json
import random

import pytest

from mlmkit.batch import shards as shards_module
from mlmkit.batch.shards import count_rows, list_inputs, plan_shards, read_shard
from mlmkit.errors import MlmkitError
from mlmkit.io.inputs import LineTally, iter_inputs, numbered_lines


def corpus(seed: int) -> bytes:
    """Lines of every kind a reader must keep apart: texts, blank lines, CRLF, bad UTF-8,
    JSON that is not a string, and no newline at the very end."""
    rng = random.Random(seed)
    pieces = ['{"text": "a <mask> b"}', "", "   ", '{"text": 5}', "not json", '{"x": 1}',
              '{"text": "caf\u00e9 [MASK]"}\r']
    lines = [rng.choice(pieces).encode() for _ in range(rng.randrange(1, 60))]
    lines[rng.randrange(len(lines))] = b"\xff\xfe"
    return b"\n".join(lines) + rng.choice([b"", b"\n"])


def whole_file(data: bytes, uri: str, jsonl: bool) -> tuple[list, int]:
    """What `mlmkit fill --input` reads: the lines of a binary file handle."""
    tally = LineTally()
    got = [(n - 1, f"{uri}: line {n}", item, problem)
           for n, item, problem in numbered_lines(io.BytesIO(data), jsonl, tally)]
    return got, tally.blank


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gz", [False, True])
def test_shards_of_any_size_read_each_line_once_as_the_single_process_reader(
        tmp_path, monkeypatch, seed, gz):
    monkeypatch.setattr(shards_module, "_READ_CHUNK", 7)  # newlines across read boundaries
    data = corpus(seed)
    path = tmp_path / ("in.jsonl.gz" if gz else "in.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    files = list_inputs(str(path))
    assert [f.kind for f in files] == ["jsonl"]
    want, blank = whole_file(data, files[0].uri, jsonl=True)
    for shard_rows in (1, 3, 5, 1000):
        counts = [count_rows(f.uri, f.kind, shard_rows) for f in files]
        assert counts[0][0] == data.count(b"\n") + (not data.endswith(b"\n"))
        plan = plan_shards(files, counts, shard_rows)
        assert [s.rows for s in plan][:-1] == [shard_rows] * (len(plan) - 1)
        tally = LineTally()
        got = [rec for s in plan for rec in read_shard(s, tally)]
        assert got == want, shard_rows
        assert tally.blank == blank


def test_rows_count_on_across_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\nb3\n")
    (tmp_path / "a.txt").write_text("a1\n\na3")
    files = list_inputs(str(tmp_path))
    plan = plan_shards(files, [count_rows(f.uri, f.kind, 2) for f in files], 2)
    assert [(s.uri.rsplit("/", 1)[1], s.row, s.rows) for s in plan] == [
        ("a.txt", 0, 2), ("a.txt", 2, 1), ("b.txt", 3, 2), ("b.txt", 5, 1)]
    got = [(row, item) for s in plan for row, _, item, _ in read_shard(s, LineTally())]
    assert got == [(0, "a1"), (2, "a3"), (3, "b1"), (4, "b2"), (5, "b3")]


def test_parquet_row_ranges_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"text {i} <mask>" for i in range(10)]
    texts[4], texts[7] = None, 12  # a null, and a number in a column of objects
    table = pa.table({"text": pa.array([t if isinstance(t, str) or t is None else str(t)
                                        for t in texts]), "id": list(range(10))})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=3)
    files = list_inputs(str(tmp_path / "*.parquet"))
    plan = plan_shards(files, [count_rows(f.uri, f.kind, 4) for f in files], 4)
    assert [(s.first, s.rows) for s in plan] == [(0, 4), (4, 4), (8, 2)]
    got = [rec for s in plan for rec in read_shard(s, LineTally())]
    assert [r[0] for r in got] == list(range(10))
    assert got[4][2:] == (None, "the text is not a string but NoneType")
    assert got[9][1:] == (f"{files[0].uri}: row 10", "text 9 <mask>", None)
    whole = [rec for s in plan for _, _, rec, _ in read_shard(s, LineTally(), whole_record=True)]
    assert [r["id"] for r in whole] == list(range(10))


def test_globs_and_directories_list_files_as_the_shell(tmp_path):
    for name in ("a.txt", "b.jsonl", "sub/c.txt", "sub/deep/d.txt", ".hidden.txt", "_x.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")

    def names(spec):
        return [f.uri[len(str(tmp_path)) + 1:] for f in list_inputs(spec)]

    assert names(f"{tmp_path}/*.txt") == ["a.txt"]
    assert names(f"{tmp_path}/**/*.txt") == ["a.txt", "sub/c.txt", "sub/deep/d.txt"]
    assert names(str(tmp_path)) == ["a.txt", "b.jsonl"]
    assert names(f"{tmp_path}/.hidden.txt") == [".hidden.txt"]  # named itself: taken
    with pytest.raises(MlmkitError, match=r"no files match"):
        list_inputs(f"{tmp_path}/*.parquet")
    with pytest.raises(MlmkitError, match=r"not found; expected a file, a directory or a glob"):
        list_inputs(str(tmp_path / "missing.txt"))


def write_records(path, kind: str) -> None:
    """Records of every kind a reader must keep apart, in a CSV, JSON array or Parquet file."""
    texts = [f"text {i} <mask>" for i in range(11)]
    if kind == "csv":
        texts[3] = "two\nlines <mask>"  # one record, two lines
        body = "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)).encode()
        body = body.replace(b"text 6", b"text \xff6")  # not UTF-8: a problem row
        path.write_bytes(b"id,text\n" + body)
    elif kind == "json":
        recs: list = [{"text": t} for t in texts]
        recs[4], recs[8] = {"text": 4}, "a bare string <mask>"
        path.write_text(json.dumps(recs, indent=1))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts[:5] + [None] + texts[6:]}), path,
                       row_group_size=3)


@pytest.mark.parametrize("kind", ["csv", "json", "parquet"])
def test_csv_json_and_parquet_shards_read_as_the_single_process_reader(tmp_path, kind):
    path = tmp_path / f"in.{kind}"
    write_records(path, kind)
    files = list_inputs(str(path))
    assert [f.kind for f in files] == [kind]
    want = [(it.index, it.where, it.item, it.problem)
            for it in iter_inputs([], str(path), LineTally())]
    assert len(want) == 11 and sum(w[3] is not None for w in want) == 1
    for shard_rows in (1, 2, 4, 1000):
        counts = [count_rows(f.uri, f.kind, shard_rows) for f in files]
        assert counts[0][0] == 11
        plan = plan_shards(files, counts, shard_rows)
        got = [rec for s in plan for rec in read_shard(s, LineTally())]
        assert got == want, shard_rows


@pytest.mark.parametrize("name", ["in.jsonl.gz", "in.csv", "in.json", "in.parquet"])
def test_urls_read_through_pyarrow_as_local_paths(tmp_path, name):
    """file:// goes the way s3:// and gs:// go (pyarrow's filesystem, fsspec's glob)."""
    path = tmp_path / name
    if name.startswith("in.jsonl"):
        path.write_bytes(gzip.compress(corpus(3)))
    else:
        write_records(path, name.split(".")[1])
    local = list(iter_inputs([], str(path), LineTally()))
    url = f"file://{tmp_path}/*.{name.split('.', 1)[1]}"
    files = list_inputs(url)
    assert [f.uri for f in files] == [f"file://{path}"]
    remote = list(iter_inputs([], url, LineTally()))
    assert [(i.number, i.item, i.problem) for i in remote] == \
        [(i.number, i.item, i.problem) for i in local]
    plan = plan_shards(files, [count_rows(f.uri, f.kind, 3) for f in files], 3)
    assert [r[2:] for s in plan for r in read_shard(s, LineTally())] == \
        [(i.item, i.problem) for i in local]
