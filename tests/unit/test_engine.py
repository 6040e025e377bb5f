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
    # The setting's one rule, EngineConfig's, naming it as the caller did: the keyword.
    assert str(e.value) == f"{keyword}={value!r}: expected an integer >= 1"


def test_check_budget_takes_none_and_positive_integers() -> None:
    check_budget(None, None)
    check_budget(1, 10**6)
    with pytest.raises(MlmkitError, match="max_tokens=0"):
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


def test_a_text_past_its_candidate_budget_gets_an_error_in_its_place(tiny_bert) -> None:
    # The amplification of issue 25 (masks x top_k records, each holding the whole text),
    # refused before any work by the parameters' one rule, wherever the task runs.
    fm = FILL.load(str(tiny_bert), device="cpu")
    texts = ["The sun is a [MASK] star.", "[MASK] " * 3 + "fly.", "Why do [MASK] fly?"]
    out = list(FILL.run(fm, texts, FillParams(2, max_candidates=5)))  # 3 masks x 2 = 6 > 5
    for got, text in ((out[0], texts[0]), (out[2], texts[2])):  # padded otherwise: float noise
        want = fm(text, top_k=2)
        assert [r["sequence"] for r in got] == [r["sequence"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-6)
    assert isinstance(out[1], MlmkitError) and str(out[1]) == (
        f"{texts[1]!r}: 3 masks x top_k 2 = 6 candidates, more than the limit of 5 a text "
        "(--max-candidates)")
    # Fewer choices than top_k (one target): 3 x 1 candidates, within the budget.
    assert len(fm(texts[1], top_k=2, targets=["the"], max_candidates=5)) == 3
    assert len(list(fm.stream(texts, top_k=2, max_candidates=6))[1]) == 3
    with pytest.raises(MlmkitError, match="--max-candidates"):  # the default is EngineConfig's
        fm("[MASK] " * 11, top_k=100)
    with pytest.raises(MlmkitError, match="max_candidates=0: expected an integer >= 1"):
        FillParams(2, max_candidates=0)


def test_a_ray_job_keeps_the_candidate_budget_and_its_actors_apply_it(tiny_bert) -> None:
    from mlmkit.batch.ray import BatchJob, BatchResources, engine_stream

    job = BatchJob.of(FillParams(2, max_candidates=5), str(tiny_bert))
    assert job.options["max_candidates"] == 5 and job.params == FillParams(2, None, 5)
    out = list(engine_stream(job, BatchResources(device="cpu"))(["[MASK] " * 3, "a [MASK]."]))
    assert isinstance(out[0], MlmkitError) and "(--max-candidates)" in str(out[0])
    assert not isinstance(out[1], MlmkitError)
