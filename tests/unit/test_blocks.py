"""Blocks are the guide's group_texts of each side of the held-out split, counted in the stats,
and cached on disk in entries that are verified on every load and rebuilt when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlmkit.blocks
from mlmkit.blocks import load_blocks
from mlmkit.config import DataConfig, MlmkitError
from mlmkit.data import TextStats, is_eval_record, iter_texts

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
    real = mlmkit.blocks._tokenize_into

    def must_not_run(*a, **kw):
        raise AssertionError("re-tokenized although the blocks are cached")

    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", must_not_run)
    second = load_blocks(cfg, roberta_tokenizer, progress=False)
    assert second.cache_path == first.cache_path
    assert np.array_equal(second.train, first.train) and np.array_equal(second.eval, first.eval)
    # Another setting is another cache entry.
    calls = []
    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", lambda *a: calls.append(1) or real(*a))
    other = load_blocks(DataConfig(**{**cfg.__dict__, "block_size": 16}), roberta_tokenizer,
                        progress=False)
    assert calls and other.cache_path != first.cache_path and other.train.shape[1] == 16


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
    from mlmkit.files import read_sealed_json, write_sealed_json

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

    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", must_not_run)
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
    assert "mlmkit did not write" in msg and "--no-cache" in msg
    assert (entry / "notes.txt").read_text() == "mine" and (entry / "meta.json").is_file()


def test_rebuild_racing_another_process(cache_cfg, roberta_tokenizer, fresh, monkeypatch,
                                        caplog):
    entry = load_blocks(cache_cfg, roberta_tokenizer, progress=False).cache_path
    _flip(entry / "train.bin")
    real = mlmkit.blocks._tokenize_into

    def while_another_process_rebuilds(*a):
        # The other process finds the same damage and installs its entry first.
        monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", real)
        assert_blocks(load_blocks(cache_cfg, roberta_tokenizer, progress=False), fresh)
        return real(*a)

    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", while_another_process_rebuilds)
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

    real = mlmkit.blocks._tokenize_into
    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", must_not_run)
    again = load_blocks(DataConfig(data=list(texts), **kw), roberta_tokenizer, progress=False)
    assert np.array_equal(again.train, want.train)
    calls = []
    monkeypatch.setattr(mlmkit.blocks, "_tokenize_into", lambda *a: calls.append(1) or real(*a))
    changed = load_blocks(DataConfig(data=[*texts[:-1], texts[-1] + " more"], **kw),
                          roberta_tokenizer, progress=False)
    assert calls and changed.cache_path != again.cache_path


def test_in_memory_error_names_the_record_index(roberta_tokenizer):
    data = ["some text"] * 5 + [None]
    with pytest.raises(MlmkitError, match=r"^data\[5\]: expected a text \(str\) or a record"):
        load_blocks(DataConfig(data=data, block_size=8), roberta_tokenizer, progress=False)
    with pytest.raises(MlmkitError, match=r"^data: the corpus holds no records"):
        load_blocks(DataConfig(data=[], block_size=8), roberta_tokenizer, progress=False)
