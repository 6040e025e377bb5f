"""tests/data holds what a clone without ../shared tests with: each file the same as, or an
unchanged excerpt of, ../shared's (checked where ../shared is present)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict

import pytest
from conftest import BLIMP, CROWS, ELI5, SHARED, SHIPPED, SPLADE


def test_the_shipped_excerpts_are_those_of_shared():
    bert_base = SHARED / "models" / "bert-base-uncased-shape"
    distilroberta = SHARED / "models" / "distilroberta-base-shape"
    needed = [ELI5, BLIMP, CROWS, SPLADE / "tokenizer.json", bert_base / "tokenizer.json",
              distilroberta / "tokenizer.json"]
    if not all(p.is_file() for p in needed):
        pytest.skip(f"../shared's material is not at {SHARED} to compare with")
    shipped = SHIPPED / "distilroberta-base"
    with gzip.open(shipped / "tokenizer.json.gz") as fh:
        assert fh.read() == (distilroberta / "tokenizer.json").read_bytes()
    assert (shipped / "config.json").read_bytes() == (distilroberta / "config.json").read_bytes()
    # bert-tiny-splade's tokenizer stands for bert-base-uncased's: the same but for the
    # padding and truncation settings it was saved with (and the model's type written out).
    ours, theirs = (json.loads((d / "tokenizer.json").read_text()) for d in (SPLADE, bert_base))
    assert ours["model"].pop("type") == "WordPiece" and "type" not in theirs["model"]
    assert {k: v for k, v in ours.items() if k not in ("padding", "truncation")} == {
        k: v for k, v in theirs.items() if k not in ("padding", "truncation")}

    def read_gz(path, **kw):
        with gzip.open(path, "rt", encoding="utf-8", **kw) as fh:
            return fh.read()

    assert json.loads(read_gz(SHIPPED / "eli5-category-test-head.json.gz")) == json.loads(
        read_gz(ELI5))[:25]
    per_uid = defaultdict(list)
    for line in read_gz(BLIMP).splitlines(keepends=True):
        if len(per_uid[json.loads(line)["UID"]]) < 25:
            per_uid[json.loads(line)["UID"]].append(line)
    assert read_gz(SHIPPED / "blimp-200.jsonl.gz") == "".join(sum(per_uid.values(), []))
    rows = [list(csv.DictReader(read_gz(p, newline="").splitlines(keepends=True)))
            for p in (CROWS, SHIPPED / "crows-pairs-100.csv.gz")]
    assert rows[1] == rows[0][::15][:100] and len(rows[1]) == 100
