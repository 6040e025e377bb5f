"""PLL scoring equals the one-copy-at-a-time reference for all three metrics, on BPE and
WordPiece models, whatever the token budget; bad texts fail alone."""

from __future__ import annotations

import math

import pytest
import torch

from mlmkit.errors import MlmkitError
from mlmkit.inference.params import METRICS, check_metric
from mlmkit.inference.score import Scorer, plan_copies
from mlmkit.modeling.load import load_model, load_tokenizer
from mlmkit.testing import reference_pll

TEXTS = [
    "The Milky Way is a spiral galaxy.",
    "Immunohistochemistry shows antidisestablishmentarianism, doesn't it?",
    "Hi",
    "Why do cats purr when they are happy, and sometimes when they are hurt or scared?",
    "Photosynthesis converts sunlight into chemical energy stored in glucose molecules.",
]


@pytest.fixture(scope="module", params=["tiny_roberta", "tiny_bert", "splade"])
def model_dir(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def reference_model(model_dir):
    return load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))


@pytest.mark.parametrize("metric", METRICS)
def test_equals_the_naive_reference(model_dir, reference_model, metric):
    model, tok = reference_model
    # A budget of 64 tokens splits a sentence's copies over several batches and mixes
    # sentences of different lengths in one: padding and attention masks are exercised.
    for budget in (64, 100_000):
        scorer = Scorer(str(model_dir), device="cpu", max_tokens=budget)
        got = scorer(TEXTS, metric=metric, per_token=True)
        for text, rec in zip(TEXTS, got):
            want = reference_pll(model, tok, text, metric)
            lps = [t["logprob"] for t in rec["token_logprobs"]]
            assert lps == pytest.approx(want, abs=2e-4), (text, budget)
            assert rec["pll"] == pytest.approx(sum(want), abs=1e-3)
            assert rec["tokens"] == len(want)
            assert rec["pppl"] == pytest.approx(math.exp(-rec["pll"] / len(want)), rel=1e-9)
            assert rec["text"] == text and rec["metric"] == metric


def test_metrics_differ_only_on_words_of_several_pieces(splade):
    scorer = Scorer(str(splade), device="cpu")
    tok = scorer.tokenizer
    one_piece = "the cat sat on the mat"
    assert all(len(tok.tokenize(w)) == 1 for w in one_piece.split())
    scores = {m: scorer(one_piece, metric=m)["pll"] for m in METRICS}
    assert scores["word-l2r"] == pytest.approx(scores["original"], abs=1e-6)
    assert scores["whole-word"] == pytest.approx(scores["original"], abs=1e-6)
    many = "immunohistochemistry"
    assert len(tok.tokenize(many)) > 2
    s = {m: scorer(many, metric=m) for m in METRICS}
    # Hiding a word's later pieces changes what its earlier pieces are scored with.
    assert abs(s["original"]["pll"] - s["word-l2r"]["pll"]) > 1e-3
    assert abs(s["word-l2r"]["pll"] - s["whole-word"]["pll"]) > 1e-3
    assert s["original"]["words"] == 1 and s["original"]["tokens"] == len(tok.tokenize(many))


def test_plan_copies_scores_every_position_once():
    words = [None, 0, 0, 0, 1, 2, 2, None]
    scored = [1, 2, 3, 4, 5, 6]
    for metric in METRICS:
        masked, score_at = plan_copies(words, scored, metric)
        assert sorted(p for c in score_at for p in c) == scored
        assert all(set(s) <= set(m) for m, s in zip(masked, score_at))
    masked, _ = plan_copies(words, scored, "word-l2r")
    assert masked == [[1, 2, 3], [2, 3], [3], [4], [5, 6], [6]]
    masked, score_at = plan_copies(words, scored, "whole-word")
    assert masked == score_at == [[1, 2, 3], [4], [5, 6]]


def test_minicons_names_are_accepted_and_unknown_metrics_named():
    assert check_metric("within_word_l2r") == "word-l2r"
    with pytest.raises(MlmkitError, match="expected one of original, word-l2r, whole-word"):
        check_metric("l2r")


def test_bad_texts_fail_alone(tiny_roberta):
    scorer = Scorer(str(tiny_roberta), device="cpu")
    long = "word " * 600
    out = list(scorer.stream(["A fine text.", "", long, 7, "Another one."]))
    assert out[0]["tokens"] > 0 and out[4]["tokens"] > 0
    assert isinstance(out[1], MlmkitError) and "no tokens to score" in str(out[1])
    assert isinstance(out[2], MlmkitError) and "more than the" in str(out[2])
    assert isinstance(out[3], MlmkitError) and "expected a string" in str(out[3])
    alone = scorer(["A fine text.", "Another one."])
    assert [r["pll"] for r in alone] == pytest.approx([out[0]["pll"], out[4]["pll"]], abs=1e-5)
    with pytest.raises(MlmkitError):
        scorer("")


def test_settings_are_checked_before_loading(tmp_path):
    with pytest.raises(MlmkitError, match="max_tokens=0"):
        Scorer(str(tmp_path / "nowhere"), max_tokens=0)
    with pytest.raises(MlmkitError, match="dtype"):
        Scorer(str(tmp_path / "nowhere"), device="cpu", dtype="int4")


def test_bfloat16_is_close(splade):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no bfloat16 kernels")
    a = Scorer(str(splade), device="cpu")(TEXTS[:2])
    b = Scorer(str(splade), device="cpu", dtype="bfloat16")(TEXTS[:2])
    for x, y in zip(a, b):
        assert y["pppl"] == pytest.approx(x["pppl"], rel=0.1)
