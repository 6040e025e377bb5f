"""The engine shell, task parameters and task registry: budgets and parameters are refused in
one line naming them before any model loads, parameters are canonical and hashable, and every
task runs its engine's own stream."""

from __future__ import annotations

import math

import pytest

from mlmkit import FillMask, MlmkitError, Scorer
from mlmkit.inference.engine import check_budget
from mlmkit.inference.params import FillParams, InvalidParam, RescoreParams, ScoreParams
from mlmkit.inference.tasks import FILL, RESCORE, SCORE, TASKS, task_for, task_named

TEXTS = ["The sun is a [MASK] star.", "Why do [MASK] fly south?", 7, "no mask"]
SENTENCES = ["The cat sat on the mat.", "", "Birds fly south."]


@pytest.mark.parametrize("engine, keyword", [(FillMask, "batch_size"), (FillMask, "max_tokens"),
                                             (Scorer, "max_tokens")])
@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True])
def test_bad_budgets_are_one_line_naming_the_setting_before_loading(tmp_path, engine, keyword,
                                                                    value):
    # A path that does not exist: the check must come first, or loading fails instead.
    with pytest.raises(MlmkitError) as e:
        engine(str(tmp_path / "nowhere"), device="cpu", **{keyword: value})
    flag = "--" + keyword.replace("_", "-")  # the setting's one rule: EngineConfig's
    assert str(e.value) == f"{flag} {value!r}: expected an integer >= 1"


def test_check_budget_takes_none_and_positive_integers() -> None:
    check_budget(None, None)
    check_budget(1, 10**6)
    with pytest.raises(MlmkitError, match="--max-tokens 0"):
        check_budget(8, 0)


@pytest.mark.parametrize("make, field, message", [
    (lambda: FillParams(0), "top_k", "top_k 0: expected a positive integer"),
    (lambda: FillParams(True), "top_k", "top_k True: expected a positive integer"),
    (lambda: FillParams(2.0), "top_k", "top_k 2.0: expected a positive integer"),
    (lambda: FillParams(3, [5]), "targets", "targets [5]: expected a string or a list of strings"),
    (lambda: ScoreParams("l2r"), "metric",
     "metric 'l2r': expected one of original, word-l2r, whole-word"),
    (lambda: RescoreParams(math.nan), "weight", "weight nan: expected a finite number"),
    (lambda: RescoreParams("1"), "weight", "weight '1': expected a finite number"),
    (lambda: RescoreParams(math.inf, "l2r"), "metric", "metric 'l2r'"),  # metric first
])
def test_bad_parameters_name_their_field(make, field, message) -> None:
    with pytest.raises(InvalidParam) as e:
        make()
    assert e.value.field == field and str(e.value).startswith(message)
    assert isinstance(e.value, MlmkitError)


def test_parameters_are_canonical_and_hashable() -> None:
    assert FillParams(3, ["a", "b"]) == FillParams(3, ("a", "b"))
    assert FillParams(3, "a").targets == ("a",)
    assert hash(ScoreParams("within_word_l2r")) == hash(ScoreParams("word-l2r"))
    assert ScoreParams("pll").metric == "original"
    assert ScoreParams(per_token=1) == ScoreParams(per_token=True)
    assert len({FillParams(), FillParams(5, None), ScoreParams(), RescoreParams()}) == 3
    assert RescoreParams(0.5, "whole_word", True).scoring == ScoreParams("whole-word", True)


def test_the_registry_finds_tasks_by_parameters_and_by_name() -> None:
    assert task_for(FillParams()) is FILL and task_for(ScoreParams()) is SCORE
    assert task_for(RescoreParams()) is RESCORE and RESCORE.reads_records
    assert TASKS == {"fill": FILL, "score": SCORE, "rescore": RESCORE}
    assert task_named("score") is SCORE
    with pytest.raises(MlmkitError, match="command 'pll': expected fill, score or rescore"):
        task_named("pll")
    with pytest.raises(TypeError):
        task_for(("fill", 5, None))  # the old untyped tuple is no task's parameters
    assert FILL.params_from({"top_k": 2, "targets": ["x"]}) == FillParams(2, ("x",))
    with pytest.raises(MlmkitError, match="expected only top_k, targets"):
        FILL.params_from({"top_k": 2, "metric": "original"})


def test_tasks_run_the_engines_own_streams(tiny_bert) -> None:
    fm = FILL.load(str(tiny_bert), device="cpu", batch_size=2)
    assert isinstance(fm, FillMask) and fm.batch_size == 2
    got = list(FILL.run(fm, iter(TEXTS), FillParams(2)))
    want = list(fm.stream(TEXTS, 2))
    assert got[:2] == want[:2] == fm(TEXTS[:2], top_k=2)
    assert [str(e) for e in got[2:]] == [str(e) for e in want[2:]]
    assert "expected a string, got int" in str(got[2]) and "no mask token" in str(got[3])

    scorer = SCORE.load(str(tiny_bert), device="cpu", batch_size=8, max_tokens=64)
    assert isinstance(scorer, Scorer) and scorer.max_tokens == 64
    out = list(SCORE.run(scorer, SENTENCES, ScoreParams("whole_word")))
    assert out[0] == scorer(SENTENCES[0], metric="whole-word") and out[0]["metric"] == "whole-word"
    assert isinstance(out[1], MlmkitError) and "no tokens to score" in str(out[1])

    nbest = [{"id": 1, "candidates": [{"text": SENTENCES[0], "score": 0.0}, SENTENCES[2]]}]
    [ranked] = RESCORE.run(scorer, nbest, RescoreParams(2.0))
    assert ranked["id"] == 1 and {c["text"] for c in ranked["candidates"]} == {SENTENCES[0],
                                                                             SENTENCES[2]}
    assert all(c["total"] == c["score"] + 2.0 * c["pll"] for c in ranked["candidates"])


@pytest.mark.parametrize("engine", [FillMask, Scorer])
def test_a_chunk_with_no_string_gives_an_error_each_and_the_next_chunk_runs(tiny_bert, engine
                                                                             ) -> None:
    # Nothing to tokenize in the first chunk: the tokenizer must not be called on [] (a fast
    # tokenizer raises IndexError there), and the stream goes on to the next chunk.
    e = engine(str(tiny_bert), device="cpu")
    e.chunk_size = 2
    text = "The cat sat on the [MASK]."
    out = list(e.stream([None, 7, text]))
    assert [type(r) for r in out[:2]] == [MlmkitError, MlmkitError]
    assert "expected a string, got NoneType" in str(out[0])
    assert not isinstance(out[2], MlmkitError)
