"""`POST /score`: the Scorer's records through the fill-mask server's queue and batches, on the
same model in memory; bad texts and parameters refused alone."""

import asyncio
import json

import pytest

pytest.importorskip("fastapi")

from mlmkit import FillMask  # noqa: E402
from mlmkit.inference.score import Scorer  # noqa: E402
from mlmkit.serving.app import create_app  # noqa: E402
from mlmkit.testing import call_app as run  # noqa: E402

SENTENCES = ["The cat sat on the mat.", "Galaxies are made of stars, gas and dust.",
             "Immunohistochemistry stains tissue."]


@pytest.fixture(scope="module")
def engine(tiny_bert) -> FillMask:
    return FillMask(str(tiny_bert), device="cpu")


@pytest.fixture(scope="module")
def scorer(tiny_bert) -> Scorer:
    return Scorer(str(tiny_bert), device="cpu")


def close(got: dict, want: dict) -> bool:
    return ({k: v for k, v in got.items() if k not in ("pll", "pppl")}
            == {k: v for k, v in want.items() if k not in ("pll", "pppl")}
            and got["pll"] == pytest.approx(want["pll"], abs=1e-4))


def test_answers_like_the_scorer_on_the_fill_engines_model(engine, scorer):
    app = create_app(engine)
    assert app.state.batcher.engines[Scorer].model is engine.model  # one model in memory

    async def go(c):
        one = await c.post("/score", json={"inputs": SENTENCES[0]})
        many = await c.post("/score", json={"inputs": SENTENCES, "parameters": {
            "metric": "whole-word", "per_token": True}})
        return one, many

    one, many = run(app, go)
    assert one.status_code == 200 and close(one.json(), scorer(SENTENCES[0]))
    assert many.status_code == 200
    want = scorer(SENTENCES, metric="whole-word", per_token=True)
    assert all(close(g, w) for g, w in zip(many.json(), want))
    assert [t["token"] for t in many.json()[2]["token_logprobs"]] == [
        t["token"] for t in want[2]["token_logprobs"]]


def test_fill_and_score_requests_share_batches_and_bad_ones_fail_alone(engine, scorer):
    app = create_app(engine, max_wait_ms=50)
    fill_want = engine("The cat sat on the [MASK].", top_k=2)

    async def go(c):
        return await asyncio.gather(
            c.post("/score", json={"inputs": SENTENCES}),
            c.post("/", json={"inputs": "The cat sat on the [MASK].",
                              "parameters": {"top_k": 2}}),
            c.post("/score", json={"inputs": ["fine text", ""]}),
            c.post("/score", json={"inputs": "x", "parameters": {"metric": "l2r"}}),
            c.post("/score", json={"inputs": "x", "parameters": {"top_k": 3}}),
            c.post("/score", json={"inputs": SENTENCES[1], "parameters": {"metric":
                                                                         "within_word_l2r"}}),
            c.post("/score", content=b'{"parameters": {}}',
                   headers={"content-type": "application/json"}))

    ok, fill, empty, metric, unknown, alias, missing = run(app, go)
    assert ok.status_code == 200 and all(close(g, w) for g, w in zip(ok.json(),
                                                                      scorer(SENTENCES)))
    assert fill.status_code == 200
    assert [r["token"] for r in fill.json()] == [r["token"] for r in fill_want]
    assert empty.status_code == 422
    assert empty.json()["error"].startswith("'inputs'[1]: '': no tokens to score")
    assert metric.status_code == 400 and metric.json()["error"] == (
        "'parameters.metric': metric 'l2r': expected one of original, word-l2r, whole-word")
    assert unknown.status_code == 400 and unknown.json()["error"] == (
        "unknown parameter(s) 'top_k': expected metric and per_token")
    assert alias.status_code == 200 and alias.json()["metric"] == "word-l2r"
    assert missing.status_code == 400 and missing.json()["error"] == (
        "missing 'inputs': expected a text to score, or a list of them")


def test_openapi_documents_the_score_route(engine):
    spec = run(create_app(engine), lambda c: c.get("/openapi.json")).json()
    ref = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/ScoreRequest"
    params = spec["components"]["schemas"]["ScoreParameters"]["properties"]
    assert set(params) == {"metric", "per_token"}


def test_an_engine_without_a_model_answers_501(engine):
    class Echo:
        tokenizer = engine.tokenizer

        def stream(self, texts, top_k, targets):
            return [[] for _ in texts]

    r = run(create_app(Echo()), lambda c: c.post("/score", json={"inputs": "a"}))
    assert r.status_code == 501 and "cannot score" in r.json()["error"]
    assert json.loads(r.text)["error"].endswith("has no model and tokenizer to share")


def test_a_score_request_past_its_work_budget_is_413_before_any_work(engine):
    # Scoring costs a text's tokens squared (one masked copy a token): a long text is refused
    # by its count from the tokenizer, before it is queued; a short one in the same app runs.
    app = create_app(engine, max_score_work=400)
    calls = []
    scorer = app.state.batcher.engines[Scorer]
    real = scorer.stream
    scorer.stream = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    n = len(engine.tokenizer("the cat sat on the mat . " * 5)["input_ids"])
    assert n * n > 400

    async def go(c):
        big = await c.post("/score", json={"inputs": "the cat sat on the mat . " * 5})
        small = await c.post("/score", json={"inputs": "the cat sat ."})
        return big, small

    big, small = run(app, go)
    assert big.status_code == 413 and "(max_score_work)" in big.json()["error"]
    assert f"{n * n:,} tokens" in big.json()["error"]
    assert small.status_code == 200 and "pll" in small.json()
    assert len(calls) == 1  # only the small request reached the engine


def test_an_int8_server_runs_fill_and_score_in_int8_and_says_so(tiny_bert):
    """`create_app(path, dtype="int8")`: the fill engine and the /score engine are one int8
    model; /health and the page name the precision; the answers are int8's own."""
    from mlmkit.modeling.precision import Int8Linear

    app = create_app(str(tiny_bert), dtype="int8", device="cpu")
    fill = app.state.engine
    score = app.state.batcher.engines[Scorer]
    assert fill.precision == score.precision == "int8" and score.model is fill.model
    assert any(isinstance(m, Int8Linear) for m in fill.model.modules())
    int8_fill = FillMask(str(tiny_bert), device="cpu", dtype="int8")

    async def go(c):
        return (await c.get("/health"), await c.get("/"),
                await c.post("/", json={"inputs": "The cat sat on the [MASK]."}),
                await c.post("/score", json={"inputs": SENTENCES[0]}))

    health, page, filled, scored = run(app, go)
    assert health.json()["precision"] == "int8"
    assert f"{tiny_bert.name} · int8" in page.text
    assert filled.json() == int8_fill("The cat sat on the [MASK].")
    assert scored.json()["pll"] == pytest.approx(
        Scorer(str(tiny_bert), device="cpu", dtype="int8")(SENTENCES[0])["pll"], abs=1e-4)


def test_precision_belongs_to_the_engine_when_one_is_given(engine):
    from mlmkit.errors import MlmkitError

    with pytest.raises(MlmkitError, match="device, dtype and runtime are the engine's"):
        create_app(engine, dtype="int8")
