"""Blocks are the guide's group_texts of each side of the held-out split, counted in the stats,
and cached on disk in entries that are verified on every load and rebuilt when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlmkit.corpus.blocks
from mlmkit.config import DataConfig
from mlmkit.corpus.blocks import load_blocks
from mlmkit.errors import MlmkitError
from mlmkit.io.fields import TextStats
from mlmkit.io.sources import is_eval_record, iter_texts

N = 40


@pytest.fixture(scope="module")
def records(sample_records):
    return sample_records[:N]


def write_jsonl(path, recs):
    with open(path, "w", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")
    return path


def texts_of(cfg: DataConfig, stats: TextStats | None = None) -> list[str]:
    return [t for _, t in iter_texts(cfg, stats)]


# --------------------------------------------------------------------------- blocks


def test_empty_records_are_counted(tmp_path, records, roberta_tokenizer):
    recs = list(records[:20])
    recs[3] = {"answers": {"text": []}}
    recs[11] = {"answers": {"text": ["  ", ""]}}
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    stats = TextStats()
    got = texts_of(DataConfig(data=str(path), text_field=["answers.text"]), stats)
    assert len(got) == 18 and (stats.records, stats.empty) == (20, 2)
    corpus = load_blocks(DataConfig(data=str(path), text_field=["answers.text"], block_size=32),
                         roberta_tokenizer, progress=False)
    assert (corpus.stats["records"], corpus.stats["empty_records"]) == (20, 2)
    assert "2 empty records skipped" in corpus.describe()


def reference_blocks(texts, tokenizer, block_size, seed, fraction, pad_id=None):
    """The guide's group_texts on the same split: concatenate, cut, drop the last partial block."""
    held = is_eval_record(np.arange(len(texts)), seed, fraction)
    out = {}
    for split, sel in (("train", ~held), ("eval", held)):
        flat = [t for i in np.flatnonzero(sel) for t in tokenizer(texts[i])["input_ids"]]
        if pad_id is not None and len(flat) % block_size:
            flat += [pad_id] * (block_size - len(flat) % block_size)
        n = len(flat) // block_size * block_size
        out[split] = np.array(flat[:n], dtype=np.int64).reshape(-1, block_size)
    return out


@pytest.mark.parametrize("kind", ["roberta", "bert", "sentencepiece"])
def test_blocks_equal_reference_group_texts(sample_path, sample_texts, kind, request):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=150,
                     block_size=64, seed=7)
    corpus = load_blocks(cfg, tok, progress=False)
    ref = reference_blocks(sample_texts[:150], tok, 64, 7, 0.2)
    assert np.array_equal(np.asarray(corpus.train, dtype=np.int64), ref["train"])
    assert np.array_equal(np.asarray(corpus.eval, dtype=np.int64), ref["eval"])
    s = corpus.stats
    assert s["records"] == 150 and s["train_blocks"] == len(ref["train"]) > 0
    assert s["dropped_tokens"] == (s["train_tokens"] % 64) + (s["eval_tokens"] % 64)
    if kind == "bert":
        assert tok.eos_token is None and corpus.train[0][0] == tok.cls_token_id


def test_pad_last_block_keeps_the_tail(sample_path, sample_texts, roberta_tokenizer):
    tok = roberta_tokenizer
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=60,
                     block_size=64, pad_last_block=True)
    corpus = load_blocks(cfg, tok, progress=False)
    ref = reference_blocks(sample_texts[:60], tok, 64, cfg.seed, 0.2, pad_id=tok.pad_token_id)
    assert np.array_equal(np.asarray(corpus.train, dtype=np.int64), ref["train"])
    assert np.array_equal(np.asarray(corpus.eval, dtype=np.int64), ref["eval"])
    assert corpus.stats["dropped_tokens"] == 0
    tail = corpus.stats["train_tokens"] % 64
    assert tail and (corpus.train[-1][tail:] == tok.pad_token_id).all()
    assert corpus.train[-1][tail - 1] == tok.eos_token_id  # the last document's end survives


def test_second_load_hits_the_cache(sample_path, roberta_tokenizer, monkeypatch, tmp_path):
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=60, block_size=32,
                     cache_dir=str(tmp_path / "c"))
    first = load_blocks(cfg, roberta_tokenizer, progress=False)
    assert first.cache_path is not None and first.cache_path.is_relative_to(tmp_path / "c")
    real = mlmkit.corpus.blocks._tokenize_into

    def must_not_run(*a, **kw):
        raise AssertionError("re-tokenized although the blocks are cached")

    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", must_not_run)
    second = load_blocks(cfg, roberta_tokenizer, progress=False)
    assert second.cache_path == first.cache_path
    assert np.array_equal(second.train, first.train) and np.array_equal(second.eval, first.eval)
    # Another setting is another cache entry.
    calls = []
    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into",
                        lambda *a: calls.append(1) or real(*a))
    other = load_blocks(DataConfig(**{**cfg.__dict__, "block_size": 16}), roberta_tokenizer,
                        progress=False)
    assert calls and other.cache_path != first.cache_path and other.train.shape[1] == 16


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_a_corpus_edited_with_its_size_and_mtime_kept_is_tokenized_again(
        tmp_path, sample_texts, roberta_tokenizer, kind):
    import os

    path = tmp_path / f"corpus.{kind}"
    texts = [t.replace("\n", " ") for t in sample_texts[:30]]

    def write(lines):
        data = "".join((json.dumps({"text": t}) if kind != "txt" else t) + "\n" for t in lines)
        with open(path, "r+" if path.exists() else "w") as fh:  # in place: the same inode
            fh.write(data)

    write(texts)
    st = os.stat(path)
    cfg = DataConfig(data=str(path), block_size=32, eval_fraction=0.0,
                     cache_dir=str(tmp_path / "c"))
    before = load_blocks(cfg, roberta_tokenizer, progress=False)
    edited = [texts[0].swapcase(), *texts[1:]]  # same length in bytes: the same file size
    write(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns, os.stat(path).st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    after = load_blocks(cfg, roberta_tokenizer, progress=False)
    fresh = load_blocks(DataConfig(**{**cfg.__dict__, "no_cache": True}), roberta_tokenizer,
                        progress=False)
    assert not np.array_equal(fresh.train, before.train)  # the edit shows in the blocks
    assert np.array_equal(after.train, fresh.train) and after.cache_path != before.cache_path


def test_a_corpus_edited_while_it_is_tokenized_is_not_cached_under_its_old_text(
        tmp_path, sample_texts, roberta_tokenizer, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(t.replace("\n", " ") + "\n" for t in sample_texts[:30]))
    cfg = DataConfig(data=str(path), block_size=32, eval_fraction=0.0,
                     cache_dir=str(tmp_path / "c"))
    real = mlmkit.corpus.blocks._tokenize_into

    def edited_meanwhile(*a, **kw):
        meta = real(*a, **kw)
        with open(path, "a") as fh:
            fh.write("A line added while the corpus was read.\n")
        return meta

    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", edited_meanwhile)
    with pytest.raises(MlmkitError, match=f"^{path}: changed while it was being tokenized"):
        load_blocks(cfg, roberta_tokenizer, progress=False)
    assert [p.name for p in (tmp_path / "c" / "blocks").iterdir()] == []  # no entry, no temp


def test_no_cache_writes_nothing(sample_path, roberta_tokenizer, tmp_path):
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=30, block_size=32,
                     cache_dir=str(tmp_path / "c"), no_cache=True)
    corpus = load_blocks(cfg, roberta_tokenizer, progress=False)
    assert len(corpus.train) > 0 and not (tmp_path / "c").exists()


def test_default_cache_follows_mlmkit_cache(sample_path, roberta_tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("MLMKIT_CACHE", str(tmp_path / "env-cache"))
    cfg = DataConfig(data=str(sample_path), text_field=["answers.text"], limit=30, block_size=32)
    corpus = load_blocks(cfg, roberta_tokenizer, progress=False)
    assert corpus.cache_path.is_relative_to(tmp_path / "env-cache")


@pytest.mark.parametrize("limit,block,match", [(2, 512, "less than one block"),
                                               (None, 32, "no records")])
def test_too_little_text(tmp_path, sample_path, roberta_tokenizer, limit, block, match):
    data = str(sample_path)
    if limit is None:
        (tmp_path / "empty.jsonl").write_text("")
        data = str(tmp_path / "empty.jsonl")
    cfg = DataConfig(data=data, text_field=["answers.text"], limit=limit, block_size=block)
    with pytest.raises(MlmkitError, match=match):
        load_blocks(cfg, roberta_tokenizer, progress=False)


# --------------------------------------------------------------------------- cache integrity


def _flip(path):
    data = bytearray(path.read_bytes())
    if path.name == "meta.json":
        # A digit of a count: still valid JSON, so only the record's own digest can tell.
        at = data.index(b'"records": ') + len(b'"records": ')
    else:
        at = len(data) // 2
    data[at] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


def _resealed(path, **change):
    """A meta.json that passes its own digest but says something else: a wrong writer's."""
    from mlmkit.io.files import read_sealed_json, write_sealed_json

    meta, _ = read_sealed_json(path)
    meta.update(change)
    write_sealed_json(path, {k: v for k, v in meta.items() if v is not None})


DAMAGE = {"flip": _flip, "truncate": _truncate, "delete": lambda p: p.unlink(),
          "garble": lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()[2:]),
          "wrong shape": lambda p: _resealed(p, train_blocks=10**6),
          "no count": lambda p: _resealed(p, records=None, dtype="float64")}


def expected_problem(name, how, size):
    if name == "meta.json":
        return {"flip": "meta.json does not match its own digest",
                "truncate": "meta.json is unreadable (JSONDecodeError)",
                "delete": "meta.json is missing",
                "garble": "meta.json is unreadable (UnicodeDecodeError)",
                "wrong shape": "meta.json records ",
                "no count": "meta.json has no valid records, dtype"}[how]
    return {"flip": f"{name} does not match its sha256 digest",
            "truncate": f"{name} has {size - 1:,} bytes, expected {size:,}",
            "delete": f"{name} is missing"}[how]


@pytest.fixture
def cache_cfg(sample_path, tmp_path):
    return DataConfig(data=str(sample_path), text_field=["answers.text"], limit=80, block_size=32,
                      cache_dir=str(tmp_path / "c"))


@pytest.fixture
def fresh(cache_cfg, roberta_tokenizer):
    """Blocks of a tokenization that never touches the cache."""
    c = load_blocks(DataConfig(**{**cache_cfg.__dict__, "no_cache": True}), roberta_tokenizer,
                    progress=False)
    return np.array(c.train), np.array(c.eval)


def assert_blocks(corpus, fresh):
    assert np.array_equal(corpus.train, fresh[0]) and np.array_equal(corpus.eval, fresh[1])


def assert_hits_cache(cfg, tokenizer, monkeypatch, caplog, fresh):
    def must_not_run(*a, **kw):
        raise AssertionError("re-tokenized although the blocks are cached")

    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", must_not_run)
    caplog.clear()
    corpus = load_blocks(cfg, tokenizer, progress=False)
    assert_blocks(corpus, fresh)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    return corpus


@pytest.mark.parametrize("name,how", [(n, h) for n in ("train.bin", "eval.bin", "meta.json")
                                      for h in ("flip", "truncate", "delete")]
                         + [("meta.json", h) for h in ("garble", "wrong shape", "no count")])
def test_damaged_cache_is_rebuilt_with_one_warning(name, how, cache_cfg, roberta_tokenizer,
                                                   fresh, monkeypatch, caplog):
    first = load_blocks(cache_cfg, roberta_tokenizer, progress=False)
    entry = first.cache_path
    assert len(first.eval) > 0  # so eval.bin has bytes to flip and cut
    size = (entry / name).stat().st_size
    del first  # its memory maps
    DAMAGE[how](entry / name)

    caplog.set_level("WARNING", logger="mlmkit")
    again = load_blocks(cache_cfg, roberta_tokenizer, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"block cache {entry}: {expected_problem(name, how, size)}")
    assert warnings[0].endswith("; rebuilding")
    assert again.cache_path == entry
    assert_blocks(again, fresh)
    # Replaced whole: nothing set aside or half-built is left beside the entry.
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
    assert sorted(p.name for p in entry.iterdir()) == ["eval.bin", "meta.json", "train.bin"]
    assert_hits_cache(cache_cfg, roberta_tokenizer, monkeypatch, caplog, fresh)


def test_an_entry_without_digests_is_not_trusted(cache_cfg, roberta_tokenizer, caplog):
    entry = load_blocks(cache_cfg, roberta_tokenizer, progress=False).cache_path
    meta = json.loads((entry / "meta.json").read_text())
    assert set(meta["files"]) == {"train.bin", "eval.bin"} and "sha256" in meta
    assert "files" not in load_blocks(cache_cfg, roberta_tokenizer, progress=False).stats
    # What version 1 wrote: the counts alone, so a flipped byte in a block went unnoticed.
    del meta["files"], meta["sha256"]
    (entry / "meta.json").write_text(json.dumps(meta))
    caplog.set_level("WARNING", logger="mlmkit")
    load_blocks(cache_cfg, roberta_tokenizer, progress=False)
    assert "meta.json is unreadable" in caplog.text and "rebuilding" in caplog.text


def test_broken_entry_with_foreign_files_is_left_alone(cache_cfg, roberta_tokenizer):
    entry = load_blocks(cache_cfg, roberta_tokenizer, progress=False).cache_path
    _truncate(entry / "train.bin")
    (entry / "notes.txt").write_text("mine")
    with pytest.raises(MlmkitError) as e:
        load_blocks(cache_cfg, roberta_tokenizer, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"block cache {entry}: train.bin has ") and "notes.txt" in msg
    assert "mlmkit did not write" in msg and "no_cache=True" in msg
    assert (entry / "notes.txt").read_text() == "mine" and (entry / "meta.json").is_file()


def test_rebuild_racing_another_process(cache_cfg, roberta_tokenizer, fresh, monkeypatch,
                                        caplog):
    entry = load_blocks(cache_cfg, roberta_tokenizer, progress=False).cache_path
    _flip(entry / "train.bin")
    real = mlmkit.corpus.blocks._tokenize_into

    def while_another_process_rebuilds(*a):
        # The other process finds the same damage and installs its entry first.
        monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", real)
        assert_blocks(load_blocks(cache_cfg, roberta_tokenizer, progress=False), fresh)
        return real(*a)

    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", while_another_process_rebuilds)
    assert_blocks(load_blocks(cache_cfg, roberta_tokenizer, progress=False), fresh)
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
    assert_hits_cache(cache_cfg, roberta_tokenizer, monkeypatch, caplog, fresh)


# --------------------------------------------------------------------------- in-memory data


def test_in_memory_data_gives_the_blocks_of_the_same_file(tmp_path, sample_texts,
                                                          roberta_tokenizer, monkeypatch):
    import datasets

    texts = sample_texts[:60]
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    kw = dict(block_size=32, seed=3, cache_dir=str(tmp_path / "c"))
    want = load_blocks(DataConfig(data=str(path), **kw), roberta_tokenizer, progress=False)
    assert len(want.train) > 0 and len(want.eval) > 0
    ds = datasets.Dataset.from_list([{"text": t, "n": i} for i, t in enumerate(texts)])
    for data in (list(texts), [{"text": t} for t in texts], ds):
        got = load_blocks(DataConfig(data=data, **kw), roberta_tokenizer, progress=False)
        assert np.array_equal(got.train, want.train) and np.array_equal(got.eval, want.eval)
        assert got.stats["source"].startswith("<in-memory") and got.cache_path is not None
    assert want.stats["source"] == str(path)

    # Cached by content: the same texts again are not tokenized again, a changed one is.
    def must_not_run(*a, **kw):
        raise AssertionError("re-tokenized although the blocks are cached")

    real = mlmkit.corpus.blocks._tokenize_into
    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", must_not_run)
    again = load_blocks(DataConfig(data=list(texts), **kw), roberta_tokenizer, progress=False)
    assert np.array_equal(again.train, want.train)
    calls = []
    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into",
                        lambda *a: calls.append(1) or real(*a))
    changed = load_blocks(DataConfig(data=[*texts[:-1], texts[-1] + " more"], **kw),
                          roberta_tokenizer, progress=False)
    assert calls and changed.cache_path != again.cache_path


def test_in_memory_error_names_the_record_index(roberta_tokenizer):
    data = ["some text"] * 5 + [None]
    with pytest.raises(MlmkitError, match=r"^data\[5\]: expected a text \(str\) or a record"):
        load_blocks(DataConfig(data=data, block_size=8), roberta_tokenizer, progress=False)
    with pytest.raises(MlmkitError, match=r"^data: the corpus holds no records"):
        load_blocks(DataConfig(data=[], block_size=8), roberta_tokenizer, progress=False)


# --------------------------------------------------------------------------- --eval-data


def token_stream(texts, tokenizer, block_size):
    """The texts' ids concatenated and cut into full blocks, none held out."""
    return reference_blocks(texts, tokenizer, block_size, 0, 0.0)["train"]


def test_eval_data_trains_on_all_of_data_and_evaluates_on_all_of_eval_data(
        tmp_path, sample_records, sample_texts, roberta_tokenizer, monkeypatch):
    tok = roberta_tokenizer
    train_path = write_jsonl(tmp_path / "train.jsonl", sample_records[:50])
    eval_path = write_jsonl(tmp_path / "eval.jsonl", sample_records[100:130])
    # limit applies to --data only; eval_fraction is ignored.
    cfg = DataConfig(data=str(train_path), eval_data=str(eval_path), text_field=["answers.text"],
                     limit=40, eval_fraction=0.5, block_size=32, cache_dir=str(tmp_path / "c"))
    corpus = load_blocks(cfg, tok, progress=False)
    assert np.array_equal(corpus.train, token_stream(sample_texts[:40], tok, 32))
    assert np.array_equal(corpus.eval, token_stream(sample_texts[100:130], tok, 32))
    s = corpus.stats
    assert (s["source"], s["eval_source"], s["eval_held_out"]) == (str(train_path),
                                                                   str(eval_path), False)
    assert (s["train_records"], s["eval_records"], s["records"]) == (40, 30, 70)
    assert (s["train_blocks"], s["eval_blocks"]) == (len(corpus.train), len(corpus.eval))
    assert f"40 records of {train_path} for training, 30 of {eval_path} for evaluation" in \
        corpus.describe()
    # Two entries, both cached.
    assert corpus.cache_path != corpus.eval_cache_path
    assert corpus.cache_path.parent == corpus.eval_cache_path.parent == tmp_path / "c" / "blocks"

    def must_not_run(*a, **kw):
        raise AssertionError("re-tokenized although the blocks are cached")

    monkeypatch.setattr(mlmkit.corpus.blocks, "_tokenize_into", must_not_run)
    again = load_blocks(cfg, tok, progress=False)
    assert np.array_equal(again.train, corpus.train) and np.array_equal(again.eval, corpus.eval)


def test_eval_data_same_file_as_data_is_two_entries(tmp_path, sample_records, sample_texts,
                                                    roberta_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", sample_records[:30])
    cfg = DataConfig(data=str(path), eval_data=str(path), text_field=["answers.text"],
                     block_size=32, cache_dir=str(tmp_path / "c"))
    corpus = load_blocks(cfg, roberta_tokenizer, progress=False)
    want = token_stream(sample_texts[:30], roberta_tokenizer, 32)
    assert np.array_equal(corpus.train, want) and np.array_equal(corpus.eval, want)
    assert corpus.cache_path != corpus.eval_cache_path  # the train side, the eval side
    split = load_blocks(DataConfig(**{**cfg.__dict__, "eval_data": None}), roberta_tokenizer,
                        progress=False)
    assert split.cache_path not in (corpus.cache_path, corpus.eval_cache_path)
    assert split.stats["eval_held_out"] and len(split.train) < len(want)


def test_eval_data_errors_name_the_eval_corpus(tmp_path, sample_records, roberta_tokenizer):
    path = str(write_jsonl(tmp_path / "c.jsonl", sample_records[:30]))
    kw = dict(data=path, text_field=["answers.text"], block_size=32, no_cache=True)
    with pytest.raises(MlmkitError, match=r"^eval_data\[1\]: expected a text \(str\) or a"):
        load_blocks(DataConfig(eval_data=[{"answers": {"text": ["one"]}}, 2], **kw),
                    roberta_tokenizer, progress=False)
    with pytest.raises(MlmkitError, match=r"^eval_data\[0\]: no field 'answers.text'; fields "
                       "here: text"):  # the same text fields as --data
        load_blocks(DataConfig(eval_data=["one"], **kw), roberta_tokenizer, progress=False)
    tiny = write_jsonl(tmp_path / "tiny.jsonl", [{"answers": {"text": ["a few words"]}}])
    with pytest.raises(MlmkitError, match=rf"^{tiny}: the corpus holds \d+ tokens, less than one "
                       "block of 32; add text, lower block_size or pass pad_last_block=True$"):
        load_blocks(DataConfig(eval_data=str(tiny), **kw), roberta_tokenizer, progress=False)


# --------------------------------------------------------------------------- --line-by-line


def multiline_records(sample_records, n):
    """ELI5 records whose answers run over several lines, with blank and whitespace-only lines
    and lines longer than a block; record 5 is empty, record 6 only whitespace."""
    recs = []
    for i, r in enumerate(sample_records[:n]):
        answers = [a.replace(". ", ".\n", 2) for a in r["answers"]["text"]]
        answers[0] += "\n\n  \t\n" + ("end of answer\r\n" if i % 3 else "")
        recs.append({"title": r["title"], "answers": {"text": [*answers, "   "]}})
    recs[5] = {"title": "", "answers": {"text": []}}
    recs[6] = {"title": " \n ", "answers": {"text": ["\n"]}}
    return recs


def run_mlm_line_by_line(recs, tokenizer, block_size, seed, fraction):
    """run_mlm.py --line_by_line --pad_to_max_length on each line of each string of each
    record, the records split as mlmkit splits them; also (truncated lines, blank lines)."""
    held = is_eval_record(np.arange(len(recs)), seed, fraction)
    out = {"train": [], "eval": []}
    truncated = blank = 0
    for i, r in enumerate(recs):
        pieces = [r["title"], *r["answers"]["text"]]
        if not " ".join(pieces).strip():
            continue  # an empty record: counted as such, not as blank lines
        for line in (ln for p in pieces for ln in p.splitlines()):
            if not (len(line) > 0 and not line.isspace()):  # run_mlm.py's own filter
                blank += 1
                continue
            enc = tokenizer(line, truncation=True, max_length=block_size, padding="max_length",
                            return_special_tokens_mask=True)
            out["eval" if held[i] else "train"].append(enc["input_ids"])
            truncated += len(tokenizer(line)["input_ids"]) > block_size
    return ({k: np.array(v, dtype=np.int64).reshape(-1, block_size) for k, v in out.items()},
            truncated, blank)


@pytest.mark.parametrize("kind", ["distilroberta", "bert_base"])
def test_line_by_line_blocks_equal_run_mlm(tmp_path, sample_records, kind, request):
    tok = request.getfixturevalue(f"{kind}_tokenizer")
    recs = multiline_records(sample_records, 60)
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    cfg = DataConfig(data=str(path), text_field=["title", "answers.text"], block_size=48,
                     line_by_line=True, seed=5, cache_dir=str(tmp_path / "c"))
    corpus = load_blocks(cfg, tok, progress=False)
    want, truncated, blank = run_mlm_line_by_line(recs, tok, 48, 5, 0.2)
    assert np.array_equal(corpus.train, want["train"])
    assert np.array_equal(corpus.eval, want["eval"])
    s = corpus.stats
    assert truncated > 20 and blank > 60  # the data exercises both
    assert (s["truncated_lines"], s["blank_lines"], s["empty_records"]) == (truncated, blank, 2)
    assert s["lines"] == len(want["train"]) + len(want["eval"]) == s["train_blocks"] + \
        s["eval_blocks"]
    assert s["train_tokens"] == int((want["train"] != tok.pad_token_id).sum())
    assert s["dropped_tokens"] == 0 and s["line_by_line"] is True
    assert (f"one block per line: {s['lines']:,} lines, {truncated} truncated to 48 tokens, "
            f"{blank} blank lines skipped" in corpus.describe())
    assert "2 empty records skipped" in corpus.describe()


def test_line_by_line_with_eval_data(tmp_path, sample_records, distilroberta_tokenizer):
    tok = distilroberta_tokenizer
    train, held = multiline_records(sample_records, 30), multiline_records(sample_records[30:], 20)
    cfg = DataConfig(data=str(write_jsonl(tmp_path / "a.jsonl", train)),
                     eval_data=str(write_jsonl(tmp_path / "b.jsonl", held)),
                     text_field=["title", "answers.text"], block_size=40, line_by_line=True,
                     no_cache=True)
    corpus = load_blocks(cfg, tok, progress=False)
    want_train, t1, b1 = run_mlm_line_by_line(train, tok, 40, 0, 0.0)
    want_eval, t2, b2 = run_mlm_line_by_line(held, tok, 40, 0, 1.0)
    assert np.array_equal(corpus.train, want_train["train"])
    assert np.array_equal(corpus.eval, want_eval["eval"])
    assert (corpus.stats["truncated_lines"], corpus.stats["blank_lines"]) == (t1 + t2, b1 + b2)


def test_line_by_line_needs_a_pad_token(tmp_path, distilroberta_tokenizer):
    import copy

    tok = copy.deepcopy(distilroberta_tokenizer)
    tok.pad_token = None
    cfg = DataConfig(data=["a line", "another"], block_size=16, line_by_line=True, no_cache=True)
    with pytest.raises(MlmkitError, match="line_by_line=True: the tokenizer .* has no pad token"):
        load_blocks(cfg, tok, progress=False)


@pytest.mark.parametrize("served_for_line_by_line", [True, False])
def test_line_by_line_and_concatenated_entries_never_collide(tmp_path, sample_records,
                                                             roberta_tokenizer, caplog,
                                                             served_for_line_by_line):
    import shutil

    path = write_jsonl(tmp_path / "c.jsonl", multiline_records(sample_records, 40))
    base = dict(data=str(path), text_field=["title", "answers.text"], block_size=32,
                cache_dir=str(tmp_path / "c"))
    lines = load_blocks(DataConfig(**base, line_by_line=True), roberta_tokenizer, progress=False)
    concat = load_blocks(DataConfig(**base), roberta_tokenizer, progress=False)
    assert lines.cache_path != concat.cache_path
    assert (lines.train == roberta_tokenizer.pad_token_id).any()
    assert not (concat.train == roberta_tokenizer.pad_token_id).any()
    want = {True: np.array(lines.train), False: np.array(concat.train)}
    # An entry of the other kind under this one's name (as a key collision would put it) is
    # caught by meta.json and rebuilt, never served.
    target, other = ((lines, concat) if served_for_line_by_line else (concat, lines))
    victim = target.cache_path
    del lines, concat, target
    shutil.rmtree(victim)
    shutil.copytree(other.cache_path, victim)
    caplog.set_level("WARNING", logger="mlmkit")
    got = load_blocks(DataConfig(**base, line_by_line=served_for_line_by_line),
                      roberta_tokenizer, progress=False)
    assert np.array_equal(got.train, want[served_for_line_by_line])
    kinds = ["concatenated", "line-by-line"]
    asked, found = kinds[served_for_line_by_line], kinds[not served_for_line_by_line]
    assert (f"meta.json describes {found} blocks of 32 tokens, not the {asked} blocks of 32 "
            "asked for; rebuilding") in caplog.text
