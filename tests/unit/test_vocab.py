"""vocab audit counts words the same way for BPE and WordPiece; vocab extend adds tokens matched
only as whole words, leaves other text's tokens as they were, starts each new row at the mean of
its pieces' rows, and saves a directory that transformers' pipeline and mlmkit train load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlmkit import MlmkitError, audit_vocab, extend_vocab
from mlmkit.cli.main import main

FIELDS = ["answers.text"]


@pytest.fixture(scope="session")
def distilroberta_small(tmp_path_factory, distilroberta_dir) -> Path:
    """The real DistilRoBERTa tokenizer on a small random model (the shape has no weights)."""
    shape = distilroberta_dir
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(shape)
    cfg.update({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 1,
                "intermediate_size": 32})
    out = tmp_path_factory.mktemp("distilroberta-small")
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def extended(tmp_path_factory, sample_texts, request):
    """{name: (base dir, VocabExtension)}, each extended by the 40 costliest words of 300 ELI5
    records, built on first use."""
    made: dict[str, tuple] = {}

    def get(name: str):
        if name not in made:
            base = request.getfixturevalue(name)
            out = tmp_path_factory.mktemp(f"{name}-vocab") / "out"
            made[name] = (base, extend_vocab(str(base), sample_texts[:300], 40, out))
        return made[name]
    return get


SOME = ["distilroberta_small", "splade", "tiny_roberta", "tiny_bert"]


def test_audit_counts_words_alike_for_bpe_and_wordpiece(distilroberta_tokenizer,
                                                        bert_base_tokenizer):
    text = ["The immunohistochemistry test, don't 42 times."]
    bpe, wp = audit_vocab(distilroberta_tokenizer, text), audit_vocab(bert_base_tokenizer, text)
    # Words: The, immunohistochemistry, test, don, t, times (digits and punctuation are none).
    assert bpe.words == wp.words == 6
    # RoBERTa: The | Ġimmun oh ist ochemistry | Ġtest | Ġdon | 't | Ġtimes
    assert (bpe.word_tokens, bpe.single_token_words) == (9, 5)
    # BERT: the | im ##mun ##oh ##isto ##chemist ##ry | test | don | t | times
    assert (wp.word_tokens, wp.single_token_words) == (11, 5)
    assert bpe.costliest[0].word == wp.costliest[0].word == "immunohistochemistry"
    assert wp.costliest[0].pieces == ["im", "##mun", "##oh", "##isto", "##chemist", "##ry"]
    assert (wp.costliest[0].cost, wp.fertility) == (5, 11 / 6)


def test_audit_ranks_by_count_times_extra_pieces(bert_base_tokenizer):
    # 2 x 5 extra pieces against 6 x 2 (trans ##isto ##rs): the more frequent word costs more.
    texts = ["immunohistochemistry"] * 2 + ["transistors"] * 6 + ["the"] * 50
    audit = audit_vocab(bert_base_tokenizer, texts, top=5)
    assert [(w.word, w.count, w.cost) for w in audit.costliest] == [
        ("transistors", 6, 12), ("immunohistochemistry", 2, 10)]


@pytest.mark.parametrize("name", SOME)
def test_added_words_are_one_token_only_as_whole_words(extended, name):
    from transformers import AutoTokenizer

    base, r = extended(name)
    tok = AutoTokenizer.from_pretrained(r.output)
    new_ids = {w.id for w in r.added}
    assert len(r.added) == 40 and len(tok) == r.vocab_size_after >= r.vocab_size_before + 40
    checked = 0
    for w in r.added:
        # The forms a word takes in mid-sentence: 'Ġ' + word (BPE), the word itself (WordPiece;
        # skipped where it lowercases the word, for the decode check)
        if w.token != ("Ġ" + w.word if r.tokenizer == "bpe" else w.word):
            continue
        checked += 1
        mid = tok(f"we saw {w.word} there", add_special_tokens=False)["input_ids"]
        assert mid.count(w.id) == 1
        for longer in (f"we saw {w.word}zq there", f"we saw zq{w.word} there"):
            ids = tok(longer, add_special_tokens=False)["input_ids"]
            assert not new_ids & set(ids), (longer, tok.convert_ids_to_tokens(ids))
        assert tok.decode(mid) == f"we saw {w.word} there"
    assert checked >= 10


@pytest.mark.parametrize("name", SOME)
def test_other_text_tokenizes_exactly_as_before(extended, name, sample_texts):
    from transformers import AutoTokenizer

    base, r = extended(name)
    old, new = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(r.output)
    assert r.changed_texts == 0  # on the 300 texts the words were chosen from
    expand = {w.id: w.piece_ids for w in r.added}
    held_out = sample_texts[300:600]
    untouched = 0
    for text in held_out:
        a = old(text, add_special_tokens=False)["input_ids"]
        b = new(text, add_special_tokens=False)["input_ids"]
        assert [p for t in b for p in expand.get(t, [t])] == a
        untouched += a == b
    assert 0 < untouched < len(held_out)  # both kinds of text were seen


@pytest.mark.parametrize("name", SOME)
def test_new_rows_are_the_mean_of_their_pieces(extended, name):
    from transformers import AutoModelForMaskedLM

    base, r = extended(name)
    a = AutoModelForMaskedLM.from_pretrained(base)
    b = AutoModelForMaskedLM.from_pretrained(r.output)
    n = r.vocab_size_before
    tables = [(a.get_input_embeddings().weight, b.get_input_embeddings().weight),
              (a.get_output_embeddings().weight, b.get_output_embeddings().weight),
              (a.get_output_embeddings().bias, b.get_output_embeddings().bias)]
    for old, new in tables:
        assert torch.equal(new[:n], old[:n])
        for w in r.added:
            assert torch.allclose(new[w.id], old[w.piece_ids].mean(0), atol=1e-6)
    assert b.config.vocab_size == b.get_input_embeddings().num_embeddings == r.vocab_size_after


def test_untied_output_embeddings_and_bias_get_their_own_means(tmp_path, sample_texts):
    from transformers import AutoModelForMaskedLM

    from mlmkit.testing import tiny_config, train_tokenizer

    tok = train_tokenizer(sample_texts[:200], "roberta", 400)
    cfg = tiny_config("roberta", len(tok), hidden=16, layers=1)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(cfg)
    with torch.no_grad():  # untied, transformers 5 keeps two biases: both must be followed
        model.lm_head.bias.uniform_(-1, 1)
        model.lm_head.decoder.bias.uniform_(-1, 1)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    r = extend_vocab(str(tmp_path / "base"), sample_texts[:200], 10, tmp_path / "out")
    a = AutoModelForMaskedLM.from_pretrained(tmp_path / "base")
    b = AutoModelForMaskedLM.from_pretrained(tmp_path / "out")
    assert not torch.equal(a.lm_head.decoder.weight, a.roberta.embeddings.word_embeddings.weight)
    for w in r.added:
        for old, new in ((a.roberta.embeddings.word_embeddings.weight,
                          b.roberta.embeddings.word_embeddings.weight),
                         (a.lm_head.decoder.weight, b.lm_head.decoder.weight),
                         (a.lm_head.bias, b.lm_head.bias),
                         (a.lm_head.decoder.bias, b.lm_head.decoder.bias)):
            assert torch.allclose(new[w.id], old[w.piece_ids].mean(0), atol=1e-6)


def test_pipeline_and_mlmkit_train_load_the_extended_model(extended, tmp_path, sample_texts):
    from transformers import pipeline

    from mlmkit import TrainConfig, train

    _, r = extended("splade")
    word = r.added[0].word
    fill = pipeline("fill-mask", r.output)
    out = fill(f"The {word} is [MASK].", top_k=3)
    assert len(out) == 3 and all(f"the {word.lower()} is" in o["sequence"] for o in out)
    record = json.loads((Path(r.output) / "vocab_extension.json").read_text())
    assert [a["token"] for a in record["added"]] == [w.token for w in r.added]
    assert record["added"][0]["pieces"] == r.added[0].pieces
    result = train(TrainConfig(model=r.output, data=sample_texts[:60], output=str(tmp_path / "t"),
                               max_steps=2, batch_size=4, block_size=32, quiet=True,
                               skip_base_eval=True))
    assert result.steps == 2 and result.final.perplexity > 0


def test_perplexity_on_text_without_new_words_is_unchanged(extended, tmp_path, sample_texts):
    from transformers import AutoTokenizer

    from mlmkit import EvalConfig, run_eval

    base, r = extended("splade")
    new = AutoTokenizer.from_pretrained(r.output)
    ids = {w.id for w in r.added}
    plain = [t for t in sample_texts[300:700]
             if not ids & set(new(t, add_special_tokens=False)["input_ids"])]
    corpus = tmp_path / "plain.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in plain) + "\n")
    ppl = [run_eval(EvalConfig(model=str(m), data=str(corpus), all_records=True, quiet=True))[0]
           for m in (base, r.output)]
    assert ppl[0].tokens == ppl[1].tokens > 5000
    assert abs(ppl[1].perplexity / ppl[0].perplexity - 1) < 0.01


def test_fertility_falls_and_the_summary_says_so(extended):
    _, r = extended("tiny_bert")
    assert r.after.fertility < r.before.fertility
    assert r.after.words == r.before.words
    # Each word's cost counts its occurrences as a whole pre-token; the single-word match
    # differs at a few edges (after '_', which BERT splits off and regex \w does not).
    saved = sum(w.cost for w in r.added)
    assert abs(r.before.word_tokens - r.after.word_tokens - saved) <= 0.01 * saved
    assert f"{r.before.fertility:.4f} -> {r.after.fertility:.4f}" in r.summary()


def test_cli_audit_json_has_the_documented_fields(tiny_bert, sample_path, capsys):
    rc = main(["vocab", "audit", str(tiny_bert), "--data", str(sample_path), "--text-field",
               "answers.text", "--limit", "50", "--top", "5", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {"model", "texts", "words", "word_tokens", "fertility", "single_token_share",
            "distinct_words", "word_definition", "costliest"} <= set(got)
    assert got["texts"] == 50 and len(got["costliest"]) == 5
    first = got["costliest"][0]
    assert set(first) == {"word", "count", "tokens_per_word", "cost", "pieces"}
    assert first["cost"] == first["count"] * (first["tokens_per_word"] - 1) == max(
        w["cost"] for w in got["costliest"])
    assert got["fertility"] == got["word_tokens"] / got["words"]


def test_cli_extend_prints_a_summary(tiny_roberta, sample_path, tmp_path, capsys):
    rc = main(["vocab", "extend", str(tiny_roberta), "--data", str(sample_path), "--text-field",
               "answers.text", "--limit", "100", "--add", "5", "--output", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and "5 whole-word tokens added" in out and "tokens per word" in out
    assert (tmp_path / "o" / "vocab_extension.json").is_file()


@pytest.mark.parametrize("add, lines, expected", [
    ("0", "some text\n", "--add 0: expected a positive number"),
    ("5", "\n  \n\n", "no text (3 records, 3 of them empty)"),
    ("5", "1234 ... 56\n", "no words"),
])
def test_cli_refuses_bad_input_in_one_line(tiny_bert, tmp_path, capsys, add, lines, expected):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(lines)
    rc = main(["vocab", "extend", str(tiny_bert), "--data", str(corpus), "--add", add,
               "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_refuses_a_directory_mlmkit_did_not_write(tiny_bert, sample_texts, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(MlmkitError, match="mine"):
            extend_vocab(str(tiny_bert), sample_texts[:20], 5, out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_a_second_extend_overwrites_its_own_output(tiny_bert, sample_texts, tmp_path):
    first = extend_vocab(str(tiny_bert), sample_texts[:50], 3, tmp_path / "o")
    with pytest.raises(MlmkitError, match="pass overwrite=True"):
        extend_vocab(str(tiny_bert), sample_texts[:50], 4, tmp_path / "o")
    again = extend_vocab(str(tiny_bert), sample_texts[:50], 4, tmp_path / "o", overwrite=True)
    assert [w.token for w in again.added[:3]] == [w.token for w in first.added]


def test_overwrite_never_deletes_the_model_it_reads(tiny_bert, sample_texts, tmp_path):
    """The output check without a TrainConfig: --overwrite of an extension that is this
    command's own --model is refused, and the hint offers no --resume (extend has none)."""
    first = tmp_path / "o"
    extend_vocab(str(tiny_bert), sample_texts[:50], 3, first)
    before = sorted(p.name for p in first.iterdir())
    with pytest.raises(MlmkitError, match="holds model .*which this run reads"):
        extend_vocab(str(first), sample_texts[:50], 3, first, overwrite=True)
    with pytest.raises(MlmkitError, match="pass overwrite=True to replace it$"):
        extend_vocab(str(first), sample_texts[:50], 3, first)
    assert sorted(p.name for p in first.iterdir()) == before


def test_bad_tokenizers_and_texts_are_errors(bert_base_tokenizer, sentencepiece_tokenizer):
    with pytest.raises(MlmkitError, match="needs a fast"):
        audit_vocab(object(), ["some text"])
    with pytest.raises(MlmkitError, match="no text"):
        audit_vocab(bert_base_tokenizer, ["", "   "])
    with pytest.raises(MlmkitError, match="handles WordPiece"):
        audit_vocab(sentencepiece_tokenizer, ["some text"])
