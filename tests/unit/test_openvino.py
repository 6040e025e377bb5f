"""`runtime="openvino"`: the compiled model gives torch's numbers (float32 exactly, int8 and
bfloat16 close on the real model), padded batches equal single texts, threads do not share a
request, the caller's model is untouched, and every entry point (fill, score, serve, Ray's
engine, the CLI) takes the one setting."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
from torch import nn

pytest.importorskip("openvino")

from mlmkit import FillMask, Scorer  # noqa: E402
from mlmkit.errors import MlmkitError  # noqa: E402
from mlmkit.modeling.load import inference_model, load_model, load_tokenizer  # noqa: E402
from mlmkit.modeling.openvino import OpenVinoMaskedLM, check_runtime  # noqa: E402

TEXTS = ["The Milky Way is a [MASK] galaxy.", "I [MASK] you.",
         "Paris is the [MASK] of France, and many people [MASK] there every year."]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def reference(splade):
    return FillMask(str(splade), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ov_float32(splade):
    return FillMask(str(splade), device="cpu", dtype="float32", runtime="openvino")


def masks(result: list) -> list[list[dict]]:
    """One text's records as a list per mask (a text with one mask has a single list)."""
    return result if isinstance(result[0], list) else [result]


def test_float32_gives_torchs_records_and_plls(splade, reference, ov_float32):
    assert ov_float32.runtime == "openvino" and ov_float32.precision == "float32"
    assert isinstance(ov_float32.model, OpenVinoMaskedLM)
    for want, got in zip(reference(TEXTS, top_k=5), ov_float32(TEXTS, top_k=5)):
        for a, b in zip(masks(want), masks(got), strict=True):
            assert [r["token"] for r in a] == [r["token"] for r in b]
            assert max(abs(r["score"] - s["score"]) for r, s in zip(a, b)) < 1e-5
    plls = Scorer(str(splade), device="cpu", dtype="float32", runtime="openvino")(TEXTS)
    ref = Scorer(str(splade), device="cpu", dtype="float32")(TEXTS)
    for a, b in zip(plls, ref):
        assert a["pll"] == pytest.approx(b["pll"], abs=1e-3)


def test_a_padded_batch_equals_each_text_alone(ov_float32):
    for text, together in zip(TEXTS, ov_float32(TEXTS, top_k=3)):
        for a, b in zip(masks(ov_float32(text, top_k=3)), masks(together), strict=True):
            assert [r["token"] for r in a] == [r["token"] for r in b]
            assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


@pytest.mark.parametrize("dtype,floor", [("int8", 0.9), ("bfloat16", 0.93)])
def test_int8_and_bfloat16_agree_with_float32_on_the_real_model(splade, reference,
                                                                masked_eli5, dtype, floor):
    """On the real bert-tiny-splade: the top candidate of nearly every mask is float32's; the
    ones that differ were near ties in float32 (not a broken graph, which would differ
    everywhere)."""
    engine = FillMask(str(splade), device="cpu", dtype=dtype, runtime="openvino")
    assert engine.precision == dtype and engine.runtime == "openvino"
    want, got = reference(masked_eli5, top_k=2), engine(masked_eli5, top_k=2)
    flips = [w for w, g in zip(want, got) if w[0]["token"] != g[0]["token"]]
    assert len(flips) <= (1 - floor) * len(masked_eli5)
    assert all(w[0]["score"] - w[1]["score"] < 0.02 for w in flips)


def test_threads_each_get_their_own_request(ov_float32, masked_eli5):
    texts = masked_eli5[:40]
    want = ov_float32(texts, top_k=1)
    got: dict[int, list] = {}

    def work(i: int) -> None:
        got[i] = [ov_float32(t, top_k=1) for t in texts[i::4]]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert [r[0]["token"] for r in got[i]] == [r[0]["token"] for r in want[i::4]]


def test_the_callers_model_is_left_as_it_was(splade):
    model, tok = load_model(str(splade)), load_tokenizer(str(splade))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = FillMask(model, tok, device="cpu", dtype="int8", runtime="openvino")
    assert engine("I [MASK] you.", top_k=1)
    # still float32 nn.Linear layers (not quantized, not packed), the same numbers
    assert all(type(m) is nn.Linear for m in model.modules() if "Linear" in type(m).__name__)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a compiled model passes through another engine as it is: one model, two tasks
    scorer = Scorer(engine.model, tok)
    assert scorer.model is engine.model and scorer.precision == "int8"
    assert scorer.device.type == "cpu" and scorer.runtime == "openvino"
    with pytest.raises(MlmkitError, match="compiled by OpenVINO, which runs it on the CPU"):
        Scorer(engine.model, tok, device="cuda")


def test_settings_are_refused_in_one_line_before_loading(monkeypatch):
    with pytest.raises(MlmkitError, match="runtime='onnx'.*expected torch or openvino"):
        check_runtime("onnx", CPU, "float32")
    with pytest.raises(MlmkitError, match="OpenVINO runs the model on a CPU; on cuda"):
        check_runtime("openvino", torch.device("cuda"), "float32")
    with pytest.raises(MlmkitError, match="expected dtype float32, bfloat16, int8"):
        check_runtime("openvino", CPU, "float16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(MlmkitError, match=r"pip install 'mlmkit\[openvino\]'"):
        check_runtime("openvino", CPU, "float32")
    # checked before the model loads: a path that does not exist is not reached
    with pytest.raises(MlmkitError, match="not installed"):
        inference_model("/nonexistent", None, "cpu", "float32", "FillMask", "openvino")


def test_the_server_runs_fill_and_score_on_one_compiled_model_and_says_so(splade, reference):
    from mlmkit.serving.app import create_app
    from mlmkit.testing import call_app

    app = create_app(str(splade), device="cpu", dtype="int8", runtime="openvino")
    fill = app.state.engine
    score = next(e for e in app.state.batcher.engines.values() if e is not fill)
    assert score.model is fill.model and score.runtime == fill.runtime == "openvino"

    async def go(c):
        return (await c.get("/health"), await c.get("/"),
                await c.post("/", json={"inputs": "I [MASK] you."}),
                await c.post("/score", json={"inputs": "I love you."}))

    health, page, filled, scored = call_app(app, go)
    assert health.json()["runtime"] == "openvino" and health.json()["precision"] == "int8"
    assert f"{splade.name} · int8 · openvino" in page.text
    assert filled.json() == fill("I [MASK] you.")
    assert scored.json()["pll"] == pytest.approx(score("I love you.")["pll"], abs=1e-4)
    with pytest.raises(MlmkitError, match="device, dtype and runtime are the engine's"):
        create_app(reference, runtime="openvino")


def test_cli_and_ray_jobs_take_the_runtime(splade, reference, capsys):
    from mlmkit.batch.ray import BatchJob, BatchResources, engine_stream
    from mlmkit.cli.main import main
    from mlmkit.inference.params import FillParams

    assert main(["fill", str(splade), "I [MASK] you.", "--runtime", "openvino", "--dtype",
                 "int8", "--top-k", "1", "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert out and out[0]
    assert main(["score", str(splade), "I love you.", "--runtime", "openvino"]) == 0
    with pytest.raises(SystemExit) as bad:
        main(["fill", str(splade), "I [MASK] you.", "--runtime", "onnx"])
    assert bad.value.code == 2 and "--runtime: invalid choice: 'onnx'" in capsys.readouterr().err
    job = BatchJob.of(FillParams(top_k=1), str(splade), dtype="float32", runtime="openvino")
    stream = engine_stream(job, BatchResources(device="cpu"))
    got = list(stream(["I [MASK] you."]))
    assert got[0][0]["token_str"] == reference("I [MASK] you.", top_k=1)[0]["token_str"]
