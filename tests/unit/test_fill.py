"""FillMask returns exactly the records of transformers' fill-mask pipeline (single and several
masks, batches of mixed lengths, targets, either mask spelling) and reports bad texts in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmkit import FillMask, MlmkitError

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
        assert set(o) == {"score", "token", "token_str", "sequence"}
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
