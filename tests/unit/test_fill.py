"""FillMask returns exactly the records of transformers' fill-mask pipeline (single and several
masks, batches of mixed lengths, targets, either mask spelling, the real RoBERTa and BERT
tokenizers on text whose decoding is not compositional), whatever the batching, and reports bad
texts in place."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from mlmkit import FillMask, MlmkitError
from mlmkit.inference.fill import batch_decoder

TEXTS = [
    "The sun is a <mask> star.",
    "Why do <mask> fly south in the winter?",
    "It is because the air pressure is <mask> at high altitude, so water boils at a lower "
    "temperature and food takes longer to cook than it would at sea level.",
    "<mask>",
]


def assert_same_records(ours, theirs):
    """Same structure and tokens; scores within 1e-5."""
    if isinstance(theirs, list) and theirs and isinstance(theirs[0], list):
        assert isinstance(ours[0], list) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert_same_records(o, t)
        return
    assert len(ours) == len(theirs) > 0
    for o, t in zip(ours, theirs):
        # "target": only on a stand-in for a target not in the vocabulary (tested below)
        assert set(o) - {"target"} == {"score", "token", "token_str", "sequence"}
        assert (o["token"], o["token_str"], o["sequence"]) == (
            t["token"], t["token_str"], t["sequence"])
        assert o["score"] == pytest.approx(t["score"], abs=1e-5)


@pytest.fixture(scope="module", params=["roberta", "bert"])
def engines(request):
    """(model dir, FillMask, HF pipeline) for a trained RoBERTa and a random BERT."""
    from transformers import pipeline

    if request.param == "roberta":
        path = Path(request.getfixturevalue("trained_roberta")[0].output)
    else:
        path = request.getfixturevalue("tiny_bert")
    return path, FillMask(str(path), device="cpu", batch_size=3), pipeline(
        "fill-mask", model=str(path), device="cpu")


def own_spelling(pipe, text):
    return text.replace("<mask>", pipe.tokenizer.mask_token)


@pytest.mark.parametrize("top_k", [1, 5])
def test_single_mask_equals_pipeline(engines, top_k):
    _, fm, pipe = engines
    text = own_spelling(pipe, TEXTS[0])
    assert_same_records(fm(text, top_k=top_k), pipe(text, top_k=top_k))
    assert len(fm(text, top_k=top_k)) == top_k


def test_several_masks_equal_pipeline(engines):
    _, fm, pipe = engines
    text = own_spelling(pipe, "The <mask> is a <mask> star, and <mask> orbit it.")
    ours = fm(text, top_k=4)
    assert len(ours) == 3 and all(len(r) == 4 for r in ours)
    assert_same_records(ours, pipe(text, top_k=4))


def test_batch_of_mixed_lengths_equals_pipeline_one_by_one(engines):
    _, fm, pipe = engines
    texts = [own_spelling(pipe, t) for t in TEXTS] + [own_spelling(pipe, "A <mask> B <mask>.")]
    ours = fm(texts, top_k=3)  # batch_size=3: several padded batches, length-sorted
    assert len(ours) == len(texts)
    for text, rec in zip(texts, ours):
        assert_same_records(rec, pipe(text, top_k=3))


def test_targets_equal_pipeline(engines):
    _, fm, pipe = engines
    text = own_spelling(pipe, TEXTS[1])
    vocab = pipe.tokenizer.get_vocab()
    in_vocab = [t for t in ("Ġbirds", "Ġthe", "birds", "the", "a", "Ġa") if t in vocab]
    targets = in_vocab[:2] + ["zebra"]  # "zebra" is not a single token: its first piece counts
    ours = fm(text, top_k=5, targets=targets)
    assert_same_records(ours, pipe(text, top_k=5, targets=targets))
    assert len(ours) == 3


def test_either_mask_spelling_works(engines):
    _, fm, pipe = engines
    other = "[MASK]" if pipe.tokenizer.mask_token == "<mask>" else "<mask>"
    text = TEXTS[0].replace("<mask>", other)
    assert_same_records(fm(text, top_k=3), pipe(own_spelling(pipe, TEXTS[0]), top_k=3))


def test_text_without_mask_raises(engines):
    _, fm, _ = engines
    with pytest.raises(MlmkitError, match="no mask token"):
        fm("There is nothing to fill here.")
    with pytest.raises(MlmkitError, match="top_k"):
        fm(TEXTS[0], top_k=0)


def test_stream_reports_bad_lines_in_place(engines):
    _, fm, pipe = engines
    too_long = "word " * (fm.max_length + 10) + "<mask>."
    texts = [TEXTS[0], "no mask here", TEXTS[1], None, TEXTS[3], too_long]
    out = list(fm.stream(iter(texts), top_k=2, chunk=2))
    assert len(out) == 6
    assert isinstance(out[1], MlmkitError) and "no mask token" in str(out[1])
    assert isinstance(out[3], MlmkitError) and "expected a string" in str(out[3])
    assert isinstance(out[5], MlmkitError) and f"the {fm.max_length} the model accepts" in str(
        out[5])
    for i in (0, 2, 4):
        assert_same_records(out[i], pipe(own_spelling(pipe, texts[i]), top_k=2))


def test_model_object_needs_its_tokenizer(tiny_bert):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    with pytest.raises(MlmkitError, match="tokenizer"):
        FillMask(model)
    fm = FillMask(model, AutoTokenizer.from_pretrained(tiny_bert), device="cpu")
    assert len(fm("a [MASK] b", top_k=2)) == 2


def test_targets_with_the_pad_token_equal_pipeline(engines):
    """The pipeline drops padding from a filled sequence, a pad candidate included."""
    _, fm, pipe = engines
    text = own_spelling(pipe, TEXTS[0])
    targets = [pipe.tokenizer.pad_token, pipe.tokenizer.convert_ids_to_tokens(10)]
    assert_same_records(fm(text, top_k=2, targets=targets), pipe(text, top_k=2, targets=targets))


# Text around the mask whose decoding is not the concatenation of its tokens' strings: accents
# and emoji (bytes split across tokens), punctuation glued to the mask, contractions, quotes.
TRICKY = [
    "The café was <mask>, and the crème brûlée too.",
    "I love it 🙂<mask> 🎉!",
    "(<mask>) isn't what \"they\" said... right?<mask>",
    "Naïve <mask>: Zürich's 東京 <mask> — ok.",
    "<mask>.",
    "He said: '<mask>'!",
    "word " * 40 + "<mask> end.",
]


@pytest.fixture(scope="module", params=["distilroberta-base-shape", "bert-base-uncased-shape"])
def real_tokenizer_engines(request, tmp_path_factory):
    """(FillMask, pipeline) on a tiny random model with a real tokenizer (byte-level BPE with a
    50,265 vocabulary, or uncased WordPiece). Weights are drawn wide (initializer_range 0.5) so
    that the top-k are clearly ordered rather than near-ties."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, pipeline

    # conftest.py: ../shared's copies ($MLMKIT_SHARED: a copy carried to a GPU machine), else
    # the same tokenizers from tests/data and bert-tiny-splade.
    src = request.getfixturevalue({"distilroberta-base-shape": "distilroberta_dir",
                                   "bert-base-uncased-shape": "bert_base_dir"}[request.param])
    path = tmp_path_factory.mktemp(request.param)
    cfg = AutoConfig.from_pretrained(src, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     initializer_range=0.5)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return FillMask(str(path), device="cpu", batch_size=3), pipeline(
        "fill-mask", model=str(path), device="cpu")


def test_real_tokenizers_on_tricky_text_equal_pipeline(real_tokenizer_engines):
    fm, pipe = real_tokenizer_engines
    texts = [own_spelling(pipe, t) for t in TRICKY]
    ours = fm(texts, top_k=5)
    for text, rec in zip(texts, ours):
        assert_same_records(rec, pipe(text, top_k=5))


@pytest.mark.parametrize("batching", [dict(batch_size=1), dict(batch_size=3),
                                      dict(batch_size=64), dict(batch_size=64, max_tokens=40)])
def test_any_batching_gives_the_same_records(real_tokenizer_engines, batching):
    fm, pipe = real_tokenizer_engines
    texts = [own_spelling(pipe, t) for t in TRICKY + TEXTS] * 3
    reference = fm(texts, top_k=3)
    other = FillMask(fm.model, fm.tokenizer, device="cpu", **batching)
    assert_same_records(other(texts, top_k=3), reference)


def test_token_budget_bounds_padded_batches(real_tokenizer_engines):
    fm, _ = real_tokenizer_engines
    other = FillMask(fm.model, fm.tokenizer, device="cpu", batch_size=5, max_tokens=40)
    lengths = [3, 4, 4, 8, 9, 10, 10, 10, 10, 10, 10, 30, 50]  # sorted, as the engine sorts
    batches = list(other._batches(list(range(len(lengths))), lengths))
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 5
        assert len(b) == 1 or len(b) * lengths[b[-1]] <= 40  # a long text goes alone
    assert [len(b) for b in batches] == [4, 4, 3, 1, 1]


def test_batch_decoder_equals_decode(real_tokenizer_engines):
    fm, pipe = real_tokenizer_engines
    tok = fm.tokenizer
    decode = batch_decoder(tok)
    assert decode.__name__ == "batched"  # the one-call path, not the fallback
    seqs = tok([own_spelling(pipe, t) for t in TRICKY + TEXTS])["input_ids"]
    seqs += [s[1:-2] + [tok.mask_token_id] + s[:3] for s in seqs]  # specials anywhere
    for skip in (True, False):
        assert decode(seqs, skip) == [tok.decode(s, skip_special_tokens=skip) for s in seqs]


def test_batch_decoder_falls_back_to_an_overridden_decode(real_tokenizer_engines):
    fm, _ = real_tokenizer_engines
    tok = fm.tokenizer

    class Shouting(type(tok)):
        def decode(self, *args, **kwargs):
            return super().decode(*args, **kwargs).upper()

    loud = Shouting.from_pretrained(tok.name_or_path)
    ids = loud("a <mask> b".replace("<mask>", loud.mask_token))["input_ids"]
    assert batch_decoder(loud)([ids], True) == [loud.decode(ids, skip_special_tokens=True)]


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_other_device_and_bfloat16_keep_the_records(real_tokenizer_engines, device):
    """On CUDA (pinned copies, events, batches in flight) float32 gives the CPU's records. In
    bfloat16, on either device: the same structure, most candidates the same, each shared
    candidate decoded the same and its probability within 0.05 (bfloat16 logits of this wide
    random model move probabilities by up to 0.036 on CPU, where 94% of candidates are
    shared)."""
    fm, pipe = real_tokenizer_engines
    texts = [own_spelling(pipe, t) for t in TRICKY + TEXTS] * 20
    reference = fm(texts, top_k=5)
    model = copy.deepcopy(fm.model)  # FillMask moves the model it is given
    fp32 = FillMask(model, fm.tokenizer, device=device, dtype="float32", batch_size=16)
    assert_same_records(fp32(texts, top_k=5), reference)
    bf16 = FillMask(model, fm.tokenizer, device=device, dtype="bfloat16", batch_size=16)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    shared = total = 0
    for got, ref in zip(bf16(texts, top_k=5), reference):
        for g_recs, r_recs in (zip(got, ref) if isinstance(ref[0], list) else [(got, ref)]):
            by_token = {r["token"]: r for r in r_recs}
            assert len(g_recs) == len(r_recs)
            for g in g_recs:
                total += 1
                if g["token"] in by_token:
                    shared += 1
                    r = by_token[g["token"]]
                    assert (g["token_str"], g["sequence"]) == (r["token_str"], r["sequence"])
                    assert g["score"] == pytest.approx(r["score"], abs=0.05)
    assert 0.8 * total <= shared < total  # < total: bfloat16 really ran


def test_unknown_targets_are_replaced_with_a_warning_naming_the_token(engines, caplog):
    """As the pipeline: the first sub-token stands in for a target not in the vocabulary, and a
    warning says which; known targets warn nothing, and each target warns once per engine."""
    _, shared, pipe = engines
    fm = FillMask(shared.model, shared.tokenizer, device="cpu")  # one that has warned nothing
    text = own_spelling(pipe, TEXTS[1])
    first = pipe.tokenizer.convert_ids_to_tokens(
        pipe.tokenizer("zebra", add_special_tokens=False)["input_ids"][0])
    known = pipe.tokenizer.convert_ids_to_tokens(10)
    with caplog.at_level(logging.WARNING, logger="mlmkit"):
        ours = fm(text, top_k=2, targets=[known, "zebra"])
        fm(text, top_k=2, targets=[known, "zebra", ""])
        fm(text, top_k=2, targets=["zebra", ""])
    assert_same_records([{k: v for k, v in r.items() if k != "target"} for r in ours],
                        pipe(text, top_k=2, targets=[known, "zebra"]))
    assert [r.getMessage() for r in caplog.records if r.name == "mlmkit"] == [
        f"target 'zebra' is not in the model's vocabulary; using its first token {first!r} "
        "instead (as transformers' fill-mask pipeline does)",
        "target '' is not in the model's vocabulary and has no token; ignoring it"]
    # The record says which target a stand-in replaced; records of known targets are as
    # the pipeline's.
    by_token = {r["token"]: r for r in ours}
    stand_in = pipe.tokenizer.convert_tokens_to_ids(first)
    assert by_token[stand_in]["target"] == "zebra"
    assert set(by_token[pipe.tokenizer.convert_tokens_to_ids(known)]) == {
        "score", "token", "token_str", "sequence"}
