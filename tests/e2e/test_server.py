"""The server: FillMask's answers, batching, 4xx on bad input, 503 when full, InferenceClient."""

import asyncio
import gzip
import json
import logging
import os
import socket
import string
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mlmkit import FillMask  # noqa: E402
from mlmkit.errors import MlmkitError  # noqa: E402
from mlmkit.serving.app import create_app  # noqa: E402
from mlmkit.testing import call_app as run  # noqa: E402
from mlmkit.testing import save_tiny_model  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "eli5-sample.jsonl.gz"
TEXTS = [
    "The game runs at a <mask> speed on the new hardware.",
    "Older games tended to run on a <mask> locked to the screen.",
    "There was only one piece of <mask> they ran on.",
    "It would be several times <mask> than the original.",
    "The <mask> is emulating the hardware.",
    "You can't <mask> for every game exactly.",
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FillMask:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        texts = [a for line in fh for a in json.loads(line)["answers"]["text"]][:2000]
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, kind="roberta",
                           vocab_size=500, hidden=32, layers=2)
    return FillMask(str(path), device="cpu")


def same(got: list, want: list) -> bool:
    """Equal records; scores to float noise, because a batch pads texts to another width."""
    if isinstance(want, list) and want and isinstance(want[0], list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return len(got) == len(want) and all(
        g["token"] == w["token"] and g["token_str"] == w["token_str"]
        and g["sequence"] == w["sequence"] and g["score"] == pytest.approx(w["score"], abs=1e-5)
        for g, w in zip(got, want))


def series(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics text, by name and labels, as prometheus_client parses it."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(text: str, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    got = series(text)
    assert key in got, f"{name}{labels} not in /metrics"
    return got[key]


def test_answers_like_fillmask(engine: FillMask) -> None:
    app = create_app(engine)

    async def go(c: httpx.AsyncClient):
        one = await c.post("/", json={"inputs": TEXTS[0]})
        many = await c.post("/fill-mask", json={"inputs": TEXTS[:3], "parameters": {"top_k": 3}})
        two_masks = await c.post("/", json={"inputs": "The <mask> runs on <mask> hardware."})
        targets = await c.post("/", json={"inputs": TEXTS[1],
                                          "parameters": {"targets": ["the", "game"]}})
        return one, many, two_masks, targets

    one, many, two_masks, targets = run(app, go)
    for r in (one, many, two_masks, targets):
        assert r.status_code == 200, r.text
    assert same(one.json(), engine(TEXTS[0]))
    assert same(many.json(), engine(TEXTS[:3], top_k=3))
    assert same(two_masks.json(), engine("The <mask> runs on <mask> hardware."))
    assert same(targets.json(), engine(TEXTS[1], targets=["the", "game"]))
    assert {r["token"] for r in targets.json()} <= set(engine.target_ids(["the", "game"]))


BAD = [
    (b'{"inputs": "a <mask>"', 400, "malformed JSON"),
    (b"\xff\xfe", 400, "malformed JSON"),
    (b'["a <mask>"]', 400, "JSON object"),
    (b'{"parameters": {"top_k": 2}}', 400, "missing 'inputs'"),
    (b'{"inputs": 3}', 400, "string or a non-empty list"),
    (b'{"inputs": []}', 400, "empty list"),
    (b'{"inputs": ["a <mask>", 7]}', 400, "'inputs'[1]: expected a string"),
    (b'{"inputs": "no mask here"}', 400, "no mask"),
    (b'{"inputs": "a <mask>", "parameters": {"topk": 3}}', 400, "unknown parameter(s) 'topk'"),
    (b'{"inputs": "a <mask>", "extra": 1}', 400, "unknown field(s) 'extra'"),
    (b'{"inputs": "a <mask>", "parameters": [1]}', 400, "'parameters': expected an object"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": "3"}}', 400, "expected an integer"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": true}}', 400, "expected an integer"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": 0}}', 400, "expected 1 to 10"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": 11}}', 400, "expected 1 to 10"),
    (b'{"inputs": "a <mask>", "parameters": {"targets": 5}}', 400, "'parameters.targets'"),
    (b'{"inputs": "a <mask>", "parameters": {"targets": ["\\u2603\\u2603"]}}', 200, ""),
    (json.dumps({"inputs": ["a <mask>"] * 5}).encode(), 413, "5 texts, more than"),
    (json.dumps({"inputs": "a <mask>" + "x" * 400}).encode(), 413, "characters, more than"),
    (json.dumps({"inputs": "<mask> " + "a " * 190}).encode(), 422, "tokens, more than"),
    (b"x" * 100_000, 413, "request body of"),
]


def test_bad_requests_get_4xx_and_the_server_keeps_answering(engine: FillMask) -> None:
    app = create_app(engine, max_inputs=4, max_text_chars=400, max_top_k=10)
    good = engine(TEXTS[0])
    engine.max_length, saved = 128, engine.max_length  # so the 422 case needs few characters

    async def go(c: httpx.AsyncClient):
        out = []
        for body, status, message in BAD:
            r = await c.post("/", content=body, headers={"content-type": "application/json"})
            ok = await c.post("/", json={"inputs": TEXTS[0]})
            out.append((body, status, message, r, ok))
        extra = [await c.get("/nope"), await c.get("/fill-mask"),
                 await c.post("/", content=b"x" * 10**7,
                              headers={"content-type": "application/json"})]
        return out, extra, await c.post("/", json={"inputs": TEXTS[0]})

    try:
        out, extra, last = run(app, go)
    finally:
        engine.max_length = saved
    for body, status, message, r, ok in out:
        assert r.status_code == status, (body[:80], r.text)
        if status != 200:
            assert message in r.json()["error"], (body[:80], r.text)
        assert ok.status_code == 200 and same(ok.json(), good)
    assert [r.status_code for r in extra] == [404, 405, 413]
    assert all("error" in r.json() for r in extra)
    assert last.status_code == 200 and same(last.json(), good)


def test_concurrent_requests_are_batched_with_the_same_results(engine: FillMask) -> None:
    app = create_app(engine, max_batch_size=16, max_wait_ms=50)
    texts = [TEXTS[i % len(TEXTS)].replace("the", "a" * (i % 3 + 1), 1) for i in range(40)]

    async def go(c: httpx.AsyncClient):
        rs = await asyncio.gather(*[c.post("/", json={"inputs": t, "parameters": {"top_k": 4}})
                                    for t in texts])
        return rs, (await c.get("/metrics")).text

    rs, prom = run(app, go)
    want = engine(texts, top_k=4)
    assert all(r.status_code == 200 for r in rs)
    for r, w in zip(rs, want):
        assert same(r.json(), w)
    calls = metric(prom, "mlmkit_batch_size_count")
    assert metric(prom, "mlmkit_batch_size_sum") == 40
    assert calls < 40 and metric(prom, "mlmkit_batch_size_bucket", le="1.0") == 0  # all batched
    assert metric(prom, "mlmkit_requests_total", method="POST", path="/", status="200") == 40
    assert metric(prom, "mlmkit_queue_depth") == 0


class GatedEngine:
    """A real engine whose calls wait for `gate`, so the queue can be filled on purpose."""

    def __init__(self, engine: FillMask) -> None:
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.entered, self.gate = threading.Event(), threading.Event()

    def stream(self, texts, top_k=5, targets=None, **budget):  # budget: max_candidates
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        return self.engine.stream(texts, top_k, targets, **budget)


def test_full_queue_answers_503_at_once(engine: FillMask) -> None:
    gated = GatedEngine(engine)
    app = create_app(gated, max_queue=2, max_batch_size=1, max_wait_ms=0)

    async def go(c: httpx.AsyncClient):
        first = asyncio.create_task(c.post("/", json={"inputs": TEXTS[0]}))
        assert await asyncio.to_thread(gated.entered.wait, 30)  # in the engine, still counted
        too_many = await c.post("/", json={"inputs": TEXTS[1:3]})  # 1 + 2 > 2
        second = asyncio.create_task(c.post("/", json={"inputs": TEXTS[1]}))
        for _ in range(1000):  # until the second request is queued (bounded, no timing)
            if app.state.batcher.pending == 2:
                break
            await asyncio.sleep(0)
        full = await c.post("/", json={"inputs": TEXTS[2]})
        prom = (await c.get("/metrics")).text
        gated.gate.set()
        return too_many, full, prom, await first, await second, \
            await c.post("/", json={"inputs": TEXTS[3]})

    too_many, full, prom, first, second, after = run(app, go)
    for r in (too_many, full):
        assert r.status_code == 503 and "server busy" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
    assert metric(prom, "mlmkit_queue_depth") == 2
    assert metric(prom, "mlmkit_requests_total", method="POST", path="/", status="503") == 2
    for r, text in ((first, TEXTS[0]), (second, TEXTS[1]), (after, TEXTS[3])):
        assert r.status_code == 200 and same(r.json(), engine(text))


def test_health_metrics_and_docs(engine: FillMask) -> None:
    app = create_app(engine)

    async def go(c: httpx.AsyncClient):
        return [await c.get(p) for p in ("/health", "/metrics", "/docs", "/openapi.json")]

    health, prom, docs, spec = run(app, go)
    assert health.json()["status"] == "ok" and health.json()["queue_depth"] == 0
    # The model's name, not where it lives on this machine.
    model_dir = Path(engine.model.config._name_or_path)
    assert health.json()["model"] == model_dir.name
    assert str(model_dir.parent) not in health.text and "/" not in health.json()["model"]
    ids = {r.headers.get("x-request-id") for r in (health, prom, docs, spec)}
    assert None not in ids and len(ids) == 4
    assert prom.headers["content-type"].startswith("text/plain; version=0.0.4")
    for family in ("mlmkit_requests_total counter", "mlmkit_request_duration_seconds histogram",
                   "mlmkit_batch_size histogram", "mlmkit_queue_depth gauge"):
        assert f"# TYPE {family}" in prom.text
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = spec.json()["paths"]
    assert "/fill-mask" in paths and "requestBody" in paths["/fill-mask"]["post"]
    # The schema is the model that checks requests: every reference resolves, limits included.
    schemas = spec.json()["components"]["schemas"]
    refs = set(_refs(spec.json()))
    assert refs and all(r.removeprefix("#/components/schemas/") in schemas for r in refs)
    body = schemas["FillRequest"]
    assert body["required"] == ["inputs"] and body["additionalProperties"] is False
    many = next(b for b in body["properties"]["inputs"]["oneOf"] if b["type"] == "array")
    assert many["maxItems"] == 64 and many["items"]["maxLength"] == 2000
    top_k = schemas["FillParameters"]["properties"]["top_k"]["anyOf"][0]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 100)


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        return [r for k, v in node.items() for r in ([v] if k == "$ref" else _refs(v))]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


# ---------------------------------------------------------------------------- hardening


def surrogate_bodies() -> list[tuple[bytes, str]]:
    """Bodies with a lone surrogate spelled as a JSON escape, and the field the 400 must name;
    with the parameters of the valid requests below, so as to share their engine call."""
    return [(b'{"inputs": "a \\ud800 <mask> b", "parameters": {"top_k": 4}}',
             "'inputs': a lone surrogate \\ud800"),
            (b'{"inputs": ["ok <mask>", "fine <mask>", "x \\udfff <mask>"], '
             b'"parameters": {"top_k": 4}}', "'inputs'[2]"),
            (b'{"inputs": "a <mask>", "parameters": {"top_k": 4, "targets": ["the", "\\ud83d"]}}',
             "'parameters.targets'[1]: a lone surrogate \\ud83d")]


INVALID = [  # (body, status, words of the message): each refused on its own, before any batch
    *[(body, 400, where) for body, where in surrogate_bodies()],
    (b"[" * 100_000, 400, "nested too deeply"),
    (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": ' + b"9" * 5000 + b"}}", 400,
     "a number of 5000 digits"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": 1' + b"0" * 60 + b"}}", 400,
     "expected 1 to 100"),
    (b'{"inputs": "no mask here", "parameters": {"top_k": 4}}', 400, "no mask"),
]


def test_bad_requests_in_a_batch_leave_the_others_alone(engine: FillMask) -> None:
    """Valid requests sent together with invalid ones, in one dynamic batch: each valid one
    gets FillMask's own answer, each invalid one its own 4xx (a text too long for the model
    passes the checks and is refused inside the batch, with 422)."""
    too_long = "<mask> " + "a " * 600
    valid = [TEXTS[i % len(TEXTS)].replace("the", "a" * (i % 4 + 1), 1) for i in range(40)]
    requests = [({"inputs": t, "parameters": {"top_k": 4}}, None) for t in valid[:30]]
    requests += [({"inputs": valid[i:i + 2], "parameters": {"top_k": 4}}, None)
                 for i in range(30, 40, 2)]
    requests.insert(7, ({"inputs": too_long, "parameters": {"top_k": 4}}, 422))
    for n, (body, status, _) in enumerate(INVALID * 3):
        requests.insert(3 * n + 1, (body, status))
    in_batch = len(valid) + 1  # the valid texts and the one too long for the model
    # A batch as large as what passes the checks, and a wait longer than the whole test takes:
    # the batch runs when it is full, so everything valid is in the same engine call.
    app = create_app(engine, max_batch_size=in_batch, max_wait_ms=60_000)

    async def go(c: httpx.AsyncClient):
        rs = await asyncio.gather(*[
            c.post("/", content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                   headers={"content-type": "application/json"}) for body, _ in requests])
        return rs, (await c.get("/metrics")).text

    rs, prom = run(app, go)
    disturbed = refused = 0
    for (body, status), r in zip(requests, rs):
        if status is None:
            want = engine(body["inputs"], top_k=4)
            disturbed += not (r.status_code == 200 and same(r.json(), want))
        else:
            refused += r.status_code == status and "error" in r.json()
    print(f"mixed batch: {len(rs)} requests, {len(rs) - len(INVALID) * 3 - 1} valid, "
          f"{disturbed} valid disturbed, {refused} of {len(INVALID) * 3 + 1} invalid refused "
          "with their own 4xx")
    assert disturbed == 0
    assert refused == len(INVALID) * 3 + 1
    for (body, status, words), r in zip(INVALID * 3, [r for (b, s), r in zip(requests, rs)
                                                      if s not in (None, 422)]):
        assert r.status_code == status and words in r.json()["error"], (body[:60], r.text)
    assert metric(prom, "mlmkit_batch_size_count") == 1  # one engine call for all of them
    assert metric(prom, "mlmkit_batch_size_sum") == in_batch


class PoisonEngine:
    """The real engine, except that a call fails whole if any of its texts says POISON: what a
    tokenizer does with a text it cannot take (a lone surrogate fails a batch so)."""

    def __init__(self, engine: FillMask) -> None:
        self.engine, self.tokenizer, self.calls = engine, engine.tokenizer, 0

    def stream(self, texts, top_k=5, targets=None, **budget):  # budget: max_candidates
        self.calls += 1
        if any("POISON" in t for t in texts):
            raise RuntimeError("tokenizer failed in /srv/secret/model")
        if targets == ["nope"]:  # as FillMask does for targets it cannot score
            raise MlmkitError("targets ['nope']: none is in the model's vocabulary")
        return self.engine.stream(texts, top_k, targets, **budget)


def test_an_engine_failure_fails_only_its_own_request(engine: FillMask,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    poison = PoisonEngine(engine)
    valid = [TEXTS[i % len(TEXTS)] for i in range(20)]
    bodies = [{"inputs": t} for t in valid]
    for i in (2, 9, 15):
        bodies.insert(i, {"inputs": f"POISON {i} <mask>"})
    app = create_app(poison, max_batch_size=len(bodies), max_wait_ms=60_000)

    async def go(c: httpx.AsyncClient):
        return await asyncio.gather(*[c.post("/", json=b) for b in bodies])

    with caplog.at_level(logging.WARNING, logger="mlmkit.serving.app"):
        rs = run(app, go)
    failed = [r for b, r in zip(bodies, rs) if "POISON" in b["inputs"]]
    answered = [(b, r) for b, r in zip(bodies, rs) if "POISON" not in b["inputs"]]
    assert all(r.status_code == 200 and same(r.json(), engine(b["inputs"])) for b, r in answered)
    assert poison.calls == 1 + len(bodies)  # the batch, then each request alone
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == len(failed) == 3
    for r in failed:
        rid = r.headers["x-request-id"]
        assert r.status_code == 500 and r.json() == {"error": f"internal error (request id {rid})"}
        assert sum(rid in rec.getMessage() for rec in tracebacks) == 1


def test_bad_parameters_refuse_their_group_in_one_call(engine: FillMask) -> None:
    # An MlmkitError from the engine is about what the group shares (its targets): each of
    # its requests gets the 400, and nothing is run again request by request.
    poison = PoisonEngine(engine)
    bodies = [{"inputs": t, "parameters": {"targets": ["nope"]} if i % 2 else {}}
              for i, t in enumerate(TEXTS)]
    app = create_app(poison, max_batch_size=len(TEXTS), max_wait_ms=60_000)

    async def go(c: httpx.AsyncClient):
        return await asyncio.gather(*[c.post("/", json=b) for b in bodies])

    rs = run(app, go)
    for b, r in zip(bodies, rs):
        if b["parameters"]:
            assert r.status_code == 400 and "none is in the model's vocabulary" in r.json()["error"]
        else:
            assert r.status_code == 200 and same(r.json(), engine(b["inputs"]))
    assert poison.calls == 2  # one per group


class BrokenEngine:
    """An engine whose every call raises, with a message a client must never see."""

    tokenizer = None

    def stream(self, texts, top_k=5, targets=None, **budget):  # budget: max_candidates
        raise ValueError("CUDA error at /home/alice/model/secret.bin")


def test_a_500_says_only_its_request_id_and_logs_the_traceback_once(
        caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(BrokenEngine())

    async def go(c: httpx.AsyncClient):
        return await c.post("/", json={"inputs": "a <mask>"})

    with caplog.at_level(logging.DEBUG, logger="mlmkit.serving.app"):
        r = run(app, go)
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.json() == {"error": f"internal error (request id {rid})"}
    assert "secret" not in r.text and "ValueError" not in r.text
    records = [rec for rec in caplog.records if rec.name == "mlmkit.serving.app"]
    assert len(records) == 1 and records[0].exc_info and rid in records[0].getMessage()
    assert "secret.bin" in "".join(caplog.text)  # the operator does get the whole story


def drive(app, receive, headers=()) -> list[dict]:
    """Call the ASGI app directly for one POST / with `receive`; the messages it sent."""
    sent: list[dict] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/", "raw_path": b"/",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), *headers]}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        await asyncio.wait_for(app(scope, receive, send), 30)  # bounded even if it hangs

    asyncio.run(main())
    return sent


def test_a_chunked_body_past_the_limit_stops_being_read(engine: FillMask) -> None:
    app = create_app(engine, max_inputs=2, max_text_chars=10)
    limit, chunk, offered = app.state.limits.max_body_bytes, 1000, 5000  # 5 MB on offer
    taken = 0

    async def receive() -> dict:  # a chunked body (no Content-Length) that goes on and on
        nonlocal taken
        taken += 1
        return {"type": "http.request", "body": b" " * chunk, "more_body": taken < offered}

    sent = drive(app, receive)
    assert sent[0]["status"] == 413 and b"more than" in sent[1]["body"]
    assert taken <= limit // chunk + 2, f"read {taken} chunks for a limit of {limit} bytes"

    async def small() -> dict:
        return {"type": "http.request", "body": b'{"inputs": "a <mask>"}', "more_body": False}

    # A Content-Length no int() could read (uvicorn refuses it first; an ASGI app must not 500).
    assert drive(app, small, [(b"content-length", b"9" * 5000)])[0]["status"] == 200


def test_a_body_that_stops_arriving_gets_408(engine: FillMask) -> None:
    app = create_app(engine, body_timeout_s=0.2)
    calls = 0

    async def receive() -> dict:  # half a body, then nothing more, ever
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"inputs": "a <m', "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sent = drive(app, receive, [(b"content-length", b"100")])
    assert sent[0]["status"] == 408
    assert "not complete after 0.2 s" in json.loads(sent[1]["body"])["error"]


def test_made_up_methods_add_no_metric_series(engine: FillMask) -> None:
    app = create_app(engine)

    async def go(c: httpx.AsyncClient):
        rs = [await c.request("XFOO", "/"), await c.get("/metrics")]
        before = (await c.get("/metrics")).text
        rs += [await c.request(f"X{i}FOO", "/") for i in range(50)]
        return before, rs, (await c.get("/metrics")).text

    before, rs, after = run(app, go)
    made_up = [r for r in rs if r.request.method != "GET"]
    assert len(made_up) == 51 and all(r.status_code == 405 and "error" in r.json()
                                      for r in made_up)
    assert set(series(after)) == set(series(before))  # not one series more for 50 new methods
    assert metric(after, "mlmkit_requests_total", method="other", path="/", status="405") == 51


def test_inference_client_against_a_live_server(engine: FillMask,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    import uvicorn
    from huggingface_hub import InferenceClient

    # huggingface_hub's offline switch (HF_HUB_OFFLINE, set for the tests) refuses every URL,
    # loopback included; this client is only ever given the local server's address below.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    # A socket bound and listening before uvicorn starts: no port race, and a client that
    # connects early simply waits in the backlog until the server accepts.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(50):  # bounded: each try waits at most 5 s in the backlog
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert thread.is_alive(), "server thread died"
        else:
            pytest.fail("server never became healthy")
        client = InferenceClient(base_url=base)
        got = client.fill_mask(TEXTS[4])
        assert same([vars(r) for r in got], engine(TEXTS[4]))
        got = client.fill_mask(TEXTS[5], top_k=2, targets=["the", "game", "play"])
        assert same([vars(r) for r in got], engine(TEXTS[5], top_k=2,
                                                   targets=["the", "game", "play"]))
        with pytest.raises(Exception, match="no mask"):  # our message, surfaced
            client.fill_mask("no mask at all")
        assert httpx.get(f"{base}/health", timeout=5).json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


# ---------------------------------------------------------------------------- fuzzing


class BigInt:
    """A JSON number of any length: Python's json.dumps refuses ints past 4,300 digits."""

    def __init__(self, digits: int) -> None:
        self.text = "9" * digits


def to_json(value) -> str:
    if isinstance(value, BigInt):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(to_json, value)) + "]"
    return json.dumps(value)  # ASCII: a lone surrogate is written as its \\udXXX escape


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` nine times in ten: most fuzzed requests should reach the fill-mask route."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


_surrogate = st.integers(0xD800, 0xDFFF).map(chr)  # st.characters() leaves them out
_text = st.text(st.one_of(st.characters(), _surrogate), max_size=30)
_masked = st.one_of(
    st.builds("{}{}{}".format, _text, st.sampled_from(["<mask>", " [MASK] ", ""]), _text),
    st.integers(1, 40).map(lambda n: "<mask> " * n))  # many masks: the candidate limits
_number = st.one_of(st.integers(-5, 120), st.integers(), st.builds(BigInt, st.integers(1, 6000)),
                    st.floats())
_junk = st.recursive(st.one_of(st.none(), st.booleans(), _number, _text, _masked),
                     lambda kids: st.one_of(st.lists(kids, max_size=4),
                                            st.dictionaries(_text, kids, max_size=3)),
                     max_leaves=10)
_parameters = st.one_of(st.none(), _junk, st.fixed_dictionaries({}, optional={
    "top_k": st.one_of(_number, _junk),
    "targets": st.one_of(_text, st.lists(_text, max_size=4), _junk)}),
    st.fixed_dictionaries({}, optional={  # /score's
        "metric": st.one_of(st.sampled_from(["original", "word-l2r", "whole-word"]), _junk),
        "per_token": st.one_of(st.booleans(), _junk)}))
_words = st.text(string.ascii_lowercase + " ", max_size=40)
_valid = st.fixed_dictionaries(  # well-formed, so that bad requests share batches with good ones
    {"inputs": st.one_of(st.builds("{} <mask> {}".format, _words, _words),
                         st.lists(st.builds("{} <mask>.".format, _words), min_size=1,
                                  max_size=8))},
    optional={"parameters": st.fixed_dictionaries({}, optional={
        "top_k": st.integers(1, 20), "targets": st.lists(st.sampled_from(["the", "a", "game"]),
                                                         min_size=1, max_size=3)})})
_payload = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.one_of(_masked, st.lists(_masked, max_size=10), _junk)},
        optional={"parameters": _parameters, "options": _junk, "extra": _junk}),
    _valid, _junk)
_body = st.one_of(
    _payload.map(lambda p: to_json(p).encode()),
    _payload.map(lambda p: to_json(p).encode()),
    st.integers(1, 100_000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'{"inputs": ' + b"[" * n + b'"a <mask>"' + b"]" * n
                             + b"}"),
    st.binary(max_size=300),
    _text.map(lambda t: t.encode("utf-8", "surrogatepass")))
_request = st.tuples(
    mostly(st.just("POST"), st.one_of(
        st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        st.text(string.ascii_uppercase, min_size=1, max_size=8))),
    mostly(st.sampled_from(["/", "/fill-mask", "/score"]), st.one_of(
        st.sampled_from(["/health", "/metrics", "/openapi.json", "/docs"]),
        st.text(string.ascii_letters + string.digits + "-._~%/", max_size=20)
        .map(lambda p: "/" + p))),
    _body,
    mostly(st.just("application/json"), st.one_of(  # None: no Content-Type header at all
        st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded", "",
                         "application/json; charset=utf-8", "APPLICATION/JSON", "json"]),
        st.text(string.printable.strip(), max_size=40))))

def test_fuzzed_requests_never_get_a_5xx(engine: FillMask,
                                         record_property) -> None:
    """Random methods, paths and bodies (nested, mistyped, lone surrogates, huge numbers, bytes
    that are not JSON) sent a few at a time: never a 5xx, every 4xx a JSON {"error": ...}."""
    app = create_app(engine, max_inputs=8, max_text_chars=200, max_top_k=20, max_wait_ms=2,
                     max_candidates=200, max_request_candidates=800)
    statuses: Counter = Counter()

    # MLMKIT_FUZZ_EXAMPLES: a larger run, once, for a report (each example is 2-16 requests)
    @settings(max_examples=int(os.environ.get("MLMKIT_FUZZ_EXAMPLES", 500)), deadline=None,
              derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_request, min_size=2, max_size=16))
    def check(requests: list) -> None:
        async def go(c: httpx.AsyncClient):
            return await asyncio.gather(*[
                c.request(m, p, content=b, headers={} if t is None else {"content-type": t})
                for m, p, b, t in requests])

        for (method, path, body, _), r in zip(requests, run(app, go)):
            statuses[r.status_code] += 1
            assert r.status_code < 500, (method, path, body[:200], r.text)
            if r.status_code >= 400 and method != "HEAD":
                assert isinstance(r.json().get("error"), str), (method, path, r.text)

    check()
    total, errors = sum(statuses.values()), sum(n for s, n in statuses.items() if s >= 500)
    record_property("fuzz_requests", total)
    record_property("fuzz_5xx", errors)
    print(f"fuzz: {total} requests, {errors} 5xx, statuses {dict(sorted(statuses.items()))}")
    assert total >= 1000 and errors == 0
