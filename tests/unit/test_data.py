"""Every input format loads, text fields are picked and joined as documented, records are
numbered as read, and the held-out split is deterministic and about the fraction asked for."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest

from mlmkit.config import DataConfig
from mlmkit.errors import MlmkitError
from mlmkit.io.fields import TextStats
from mlmkit.io.sources import describe_source, is_eval_record, iter_texts, resolve_files

N = 40


@pytest.fixture(scope="module")
def records(sample_records):
    return sample_records[:N]


@pytest.fixture(scope="module")
def joined(records):
    return [" ".join(r["answers"]["text"]) for r in records]


def texts_of(cfg: DataConfig, stats: TextStats | None = None) -> list[str]:
    return [t for _, t in iter_texts(cfg, stats)]


def write_jsonl(path, recs, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")
    return path


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.json", "c.json.gz", "c.parquet"])
def test_structured_formats_load(tmp_path, records, joined, name):
    path = tmp_path / name
    if name.startswith("c.jsonl"):
        write_jsonl(path, records, gz=name.endswith(".gz"))
    elif name.startswith("c.json"):
        with (gzip.open if name.endswith(".gz") else open)(path, "wt", encoding="utf-8") as fh:
            json.dump(records, fh)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    assert texts_of(DataConfig(data=str(path), text_field=["answers.text"])) == joined


def test_real_eli5_json_array(eli5_path):
    with gzip.open(eli5_path, "rt", encoding="utf-8") as fh:
        recs = json.load(fh)[:25]
    got = texts_of(DataConfig(data=str(eli5_path), text_field=["answers.text"], limit=25))
    assert got == [" ".join(r["answers"]["text"]) for r in recs]


def test_txt_and_csv(tmp_path, joined):
    lines = [t.replace("\n", " ") for t in joined]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert texts_of(DataConfig(data=str(tmp_path / "c.txt"))) == lines
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "text"])
        w.writeheader()
        w.writerows({"id": i, "text": t} for i, t in enumerate(joined))
    assert texts_of(DataConfig(data=str(tmp_path / "c.csv"))) == joined  # embedded newlines kept


def test_directory_and_glob(tmp_path, records, joined):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "part1.jsonl", records[:15])
    write_jsonl(tmp_path / "b" / "part2.jsonl.gz", records[15:], gz=True)
    (tmp_path / "notes.md").write_text("ignored: not a corpus format")
    assert texts_of(DataConfig(data=str(tmp_path), text_field=["answers.text"])) == joined
    glob_cfg = DataConfig(data=str(tmp_path / "*" / "part*"), text_field=["answers.text"])
    assert texts_of(glob_cfg) == joined


def test_missing_inputs_are_errors_and_hub_ids_are_not_files(tmp_path):
    with pytest.raises(MlmkitError, match="not found"):
        resolve_files(str(tmp_path / "nope.jsonl"))
    with pytest.raises(MlmkitError, match="matches no"):
        resolve_files(str(tmp_path / "*.jsonl"))
    assert resolve_files("eli5_category") is None


NOT_UTF8 = {  # each with the bad bytes in physical line 3
    "c.txt": b"one\ntwo\nthr\xff\xfeee\nfour\n",
    "c.jsonl": b'{"text": "a"}\n{"text": "b"}\n{"text": "c\xff\xfe"}\n{"text": "d"}\n',
    "c.json": b'[{"text": "a"},\n{"text": "b"},\n{"text": "c\xff\xfe"}]\n',
    "c.csv": b"text\none\nthr\xff\xfeee\nfour\n",
    "c.jsonl.gz": gzip.compress(b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff\xfe"}\n'),
}


@pytest.mark.parametrize("name", list(NOT_UTF8))
def test_non_utf8_names_file_line_and_offset(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_UTF8[name])
    raw = gzip.decompress(NOT_UTF8[name]) if name.endswith(".gz") else NOT_UTF8[name]
    at = raw.index(b"\xff")
    with pytest.raises(MlmkitError) as e:
        texts_of(DataConfig(data=str(path)))
    assert str(e.value).startswith(f"{path}: line 3: byte 0xff at offset {at} ")
    assert str(e.value).endswith("expected UTF-8 text") and "\n" not in str(e.value)


def test_non_utf8_far_into_a_file_counts_from_the_file_start(tmp_path):
    # Past the text reader's first buffers, where the decoder's own position restarts.
    lines = [f"line {i} é".encode() for i in range(50_000)]
    lines[37_000] = b"caf\xe9 in latin-1"
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "big.txt").write_bytes(data)
    at = data.index(b"caf\xe9") + 3
    with pytest.raises(MlmkitError, match=f"line 37001: byte 0xe9 at offset {at:,} is not UTF-8"):
        texts_of(DataConfig(data=str(tmp_path / "big.txt")))


# --------------------------------------------------------------------------- fields


def test_list_field_joined_with_space_several_fields_and_limit(sample_path, records):
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=7)
    assert texts_of(cfg) == [" ".join(r["answers"]["text"]) for r in records[:7]]
    cfg = DataConfig(data=str(sample_path), text_field=["title", "answers.text"], limit=5)
    assert texts_of(cfg) == [r["title"] + " " + " ".join(r["answers"]["text"])
                             for r in records[:5]]


def test_default_field_is_text_or_the_only_string(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"n": 1, "body": "hello there"}])
    assert texts_of(DataConfig(data=str(tmp_path / "a.jsonl"))) == ["hello there"]
    write_jsonl(tmp_path / "b.jsonl", [{"title": "x", "body": "y"}])
    with pytest.raises(MlmkitError, match="name one with text_field "):
        texts_of(DataConfig(data=str(tmp_path / "b.jsonl")))


def test_unknown_field_lists_existing_fields(sample_path):
    with pytest.raises(MlmkitError) as e:
        texts_of(DataConfig(data=str(sample_path), text_field=["answers.txt"]))
    msg = str(e.value)
    assert "answers.txt" in msg and "answers.text" in msg and "title" in msg and "line 1" in msg


@pytest.mark.parametrize("field,kind", [("answers.score", "list of int"),
                                        ("answers", "dict")])
def test_non_text_field_is_an_error(tmp_path, field, kind):
    write_jsonl(tmp_path / "c.jsonl", [{"answers": {"text": ["a"], "score": [3, 4]}}])
    with pytest.raises(MlmkitError, match=f"holds a {kind}; expected text or a list of text"):
        texts_of(DataConfig(data=str(tmp_path / "c.jsonl"), text_field=[field]))


def test_invalid_json_line_names_file_and_line(tmp_path, records):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, records[:3])
    with open(path, "a") as fh:
        fh.write('{"answers": {"text": ["a"]}\n')
    with pytest.raises(MlmkitError, match=r"c\.jsonl: line 4: invalid JSON"):
        texts_of(DataConfig(data=str(path), text_field=["answers.text"]))


# --------------------------------------------------------------------------- held-out split


def test_held_out_split_is_deterministic_and_about_a_fifth():
    idx = np.arange(20_000)
    held = is_eval_record(idx, 42, 0.2)
    assert abs(held.mean() - 0.2) < 0.01
    assert np.array_equal(held, is_eval_record(idx, 42, 0.2))
    assert np.array_equal(held[:777], is_eval_record(idx[:777], 42, 0.2))  # streaming-safe
    assert not np.array_equal(held, is_eval_record(idx, 43, 0.2))
    assert not is_eval_record(idx, 42, 0.0).any()


@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_json_array_streams_across_chunk_boundaries(chunk):
    import io

    from mlmkit.io.formats import iter_json_array as _iter_json_array

    items = [{"text": "é" * i, "n": -i * 1000, "x": [1.5, None]} for i in range(200)] + [7, []]
    for indent in (None, 2):
        fh = io.StringIO(json.dumps(items, indent=indent))
        assert fh.read(1) == "["
        assert list(_iter_json_array(fh, "f.json", chunk)) == items


@pytest.mark.parametrize("text,expected", [
    ('[{"a": "x"}, {"a": "y"}', "ends after element 2 without ']'"),
    ('[{"a": "x"} {"a": "y"}]', "after element 1 of the JSON array: expected ',' or ']'"),
    ('[{"a": "x"},]', "element 2 of the JSON array: invalid JSON"),
])
def test_broken_json_array_names_file_and_element(tmp_path, text, expected):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(MlmkitError) as e:
        list(iter_texts(DataConfig(data=str(path), text_field=["a"])))
    assert str(e.value).startswith(str(path)) and expected in str(e.value)


# --------------------------------------------------------------------------- in-memory data


def test_in_memory_texts_records_and_dataset_read_as_a_file(tmp_path, records, joined):
    import datasets

    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in joined])
    want = texts_of(DataConfig(data=str(path)))
    assert want == joined
    assert texts_of(DataConfig(data=list(joined))) == want
    assert texts_of(DataConfig(data=[{"text": t, "n": i} for i, t in enumerate(joined)])) == want
    ds = datasets.Dataset.from_list(records)
    assert texts_of(DataConfig(data=ds, text_field=["answers.text"])) == want
    assert texts_of(DataConfig(data=ds.with_format("numpy"), text_field=["answers.text"])) == want
    assert texts_of(DataConfig(data=ds, text_field=["answers.text"], limit=3)) == want[:3]
    # The only string field is the text, as in files.
    assert texts_of(DataConfig(data=[{"n": 1, "body": "hi there"}])) == ["hi there"]


@pytest.mark.parametrize("data,expected", [
    ([{"text": "a"}] * 12 + [{"body": "b", "title": "c"}],
     "data[12]: no field 'text'; fields here: body, title"),
    ([{"body": "a", "title": "b"}], "data[0]: no 'text' field and no single text field"),
    (["a", "b", 3], "data[2]: expected a text (str) or a record (dict), got int"),
    ([{"text": "a"}, {"text": 5}], "data[1]: field 'text' holds a int; expected text"),
    ({"text": ["a"]}, "data: expected a Hub dataset id, a path, a list of texts or records"),
])
def test_in_memory_errors_name_the_record_index(data, expected):
    with pytest.raises(MlmkitError) as e:
        texts_of(DataConfig(data=data))
    assert str(e.value).startswith(expected), str(e.value)


def test_describe_source_is_printable_json_safe_and_follows_the_content(sample_path):
    import datasets

    assert describe_source(str(sample_path)) == str(sample_path)
    assert describe_source(sample_path) == str(sample_path)
    assert describe_source("eli5_category") == "eli5_category"
    assert describe_source(None) is None
    texts = [f"text number {i}" for i in range(1000)]
    d = describe_source(texts)
    assert d.startswith("<in-memory: 1,000 texts, sha256 ") and d.endswith("…>")
    assert json.loads(json.dumps(d)) == d and d == describe_source(list(texts))
    assert describe_source(texts[:-1] + ["text number 999 "]) != d
    ds = datasets.Dataset.from_list([{"text": t} for t in texts])
    assert describe_source(ds).startswith("<in-memory Dataset: 1,000 records, sha256 ")
    assert describe_source([{"text": t} for t in texts]).split("sha256")[1] == \
        describe_source(ds).split("sha256")[1]  # the same records, the same digest


def test_resolve_files_leaves_in_memory_data_alone():
    import datasets

    assert resolve_files(["a", "b"]) is None
    assert resolve_files(datasets.Dataset.from_list([{"text": "a"}])) is None
    assert resolve_files(None) is None


# ----------------------------------------------------------------- --split on local files


@pytest.mark.parametrize("split", ["train[:7]", "train[5:12]", "train[10%:]", "train[-6:]",
                                   "train[:-35]", "train[33%:66%]", "train[:5%]+train[-5%:]",
                                   "train[-10%:-5%]", "train[:100]"])
def test_split_slices_local_files_as_datasets_does(split, records, tmp_path):
    """The same records `datasets.load_dataset('json', data_files=..., split=...)` gives."""
    import datasets

    path = write_jsonl(tmp_path / "c.jsonl", records)
    theirs = datasets.load_dataset("json", data_files=str(path), split=split,
                                   cache_dir=str(tmp_path / "hf"))
    ours = texts_of(DataConfig(data=str(path), split=split, text_field=["answers.text"]))
    assert ours == [" ".join(r["answers"]["text"]) for r in theirs]


def test_split_comes_before_limit_and_changes_the_cache_identity(records, tmp_path):
    from mlmkit.io.sources import iter_records

    path = write_jsonl(tmp_path / "c.jsonl", records)
    cfg = DataConfig(data=str(path), split="train[10:]", limit=3, text_field=["answers.text"])
    assert texts_of(cfg) == [" ".join(r["answers"]["text"]) for r in records[10:13]]
    whole = iter_records(DataConfig(data=str(path)))
    part = iter_records(cfg)
    assert whole.ident != part.ident and "split train[10:]" in part.description


@pytest.mark.parametrize("split,needle", [
    ("test", "local files are one split, 'train'"),
    ("validation[:10]", "local files are one split, 'train'"),
    ("train[1:2:3]", "expected 'train' or a slice of it"),
    ("train[:10%](pct1_dropremainder)", "expected 'train' or a slice of it"),
])
def test_other_splits_of_local_files_are_refused_in_one_line(split, needle, records, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", records)
    with pytest.raises(MlmkitError) as e:
        texts_of(DataConfig(data=str(path), split=split))
    assert str(e.value).startswith(f"split={split!r}: ") and needle in str(e.value)
    with pytest.raises(MlmkitError, match="in-memory data is not split"):
        texts_of(DataConfig(data=["a text"], split=split))
