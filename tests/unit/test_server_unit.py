"""Request checking (payload), metrics, limits and `mlmkit serve` wiring of the server, no model."""

import json
import subprocess
import sys

import pytest

from mlmkit.errors import MlmkitError
from mlmkit.inference.params import FillParams
from mlmkit.serving.metrics import ServerMetrics
from mlmkit.serving.payload import ApiError, Limits, parse_request, request_model

LIMITS = Limits(max_inputs=3, max_text_chars=50, max_top_k=10)


def parse(payload, **kw):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_request(body, LIMITS, **kw)


def test_parse_accepts_the_hf_payloads() -> None:
    assert parse({"inputs": "a <mask>."}) == (["a <mask>."], True, FillParams(5, None))
    assert parse({"inputs": ["a <mask>", "b [MASK]"], "parameters": {"top_k": 2}}) == (
        ["a <mask>", "b [MASK]"], False, FillParams(2, None))
    # What InferenceClient.fill_mask sends with its defaults, and with targets as one string.
    assert parse({"inputs": "a <mask>", "parameters": {}})[2].top_k == 5
    assert parse({"inputs": "a <mask>", "parameters": {"targets": "x"}})[2].targets == ("x",)
    assert parse({"inputs": "a <mask>", "parameters": None,
                  "options": {"use_cache": 1}})[2].top_k == 5
    assert parse({"inputs": "a <mask>", "parameters": {"top_k": 10}},
                 vocab_size=4)[2].top_k == 4
    assert parse({"inputs": "a [M]"}, mask_token="[M]")[0] == ["a [M]"]


@pytest.mark.parametrize("payload, status, message", [
    (b"{", 400, "malformed JSON"),
    ({"inputs": None}, 400, "'inputs': expected a string or a non-empty list of strings, got null"),
    ({"inputs": {"text": "a <mask>"}}, 400, "got an object"),
    ({"inputs": "a <mask>", "parameters": {"top_k": 2.5}}, 400, "expected an integer, got 2.5"),
    ({"inputs": "a <mask>", "parameters": {"targets": []}}, 400, "non-empty list"),
    ({"inputs": "a <mask>", "parameters": {"targets": ["ok", ""]}}, 400,
     "'parameters.targets'[1]: expected a non-empty string, got ''"),
    ({"inputs": "a <mask>", "parameters": {"targets": ["w"] * 31}}, 413, "31 words"),
    ({"inputs": "a <mask>", "parameters": {"top_k": 10**80}}, 400,  # quoted, cut short
     "'parameters.top_k' 1" + "0" * 56 + "...: expected 1 to 10"),
    ({"inputs": "a <mask>", "parameters": {"topk": 3, "k": 1}}, 400,
     "unknown parameter(s) 'k', 'topk'"),
    ({"input": "a <mask>"}, 400, "unknown field(s) 'input'"),
    (b'{"inputs": "a \\udc00 <mask>"}', 400,
     "'inputs': a lone surrogate \\udc00 at character 2"),
    (b'{"inputs": ["a <mask>", "b \\ud800"]}', 400, "'inputs'[1]: a lone surrogate \\ud800"),
    (b'{"inputs": "a <mask>", "parameters": {"targets": "\\ud800x"}}', 400,
     "'parameters.targets': a lone surrogate"),
    (b'{"inputs": ' + b"[" * 10_000, 400, "nested too deeply"),
    (b'{"inputs": "a <mask>", "parameters": {"top_k": ' + b"7" * 5000 + b"}}", 400,
     "a number of 5000 digits"),
    ({"inputs": ["a <mask>"] * 4}, 413, "4 texts"),
    ({"inputs": ["a <mask>", "x" * 51]}, 413, "'inputs'[1]: 51 characters"),
    ({"inputs": ["a <mask>", "none"]}, 400, "'inputs'[1]: no mask in 'none'"),
    (b" " * 200_000, 413, "request body of 200000 bytes"),
])
def test_parse_refuses_with_a_clear_message(payload, status, message) -> None:
    with pytest.raises(ApiError) as e:
        parse(payload)
    assert e.value.status == status and message in e.value.message


def test_refusal_messages_stay_short_and_encodable() -> None:
    # Whatever a client sends, the message quotes little of it and is valid UTF-8 to send back.
    deep = json.loads("[" * 500 + "]" * 500)
    for payload in ({"inputs": "a <mask>", "parameters": {"top_k": deep}}, {"inputs": deep},
                    {"inputs": "x" * 10_000}, {"\ud800" * 1000: 1, "y" * 5000: 2},
                    {"inputs": "a <mask>", "parameters": {"k" * 5000: 1}}):
        with pytest.raises(ApiError) as e:
            parse(payload)
        assert len(e.value.message) < 300, e.value.message
        e.value.message.encode("utf-8")


def test_request_model_schema_shows_the_limits() -> None:
    schema = request_model(LIMITS).model_json_schema()
    many = next(b for b in schema["properties"]["inputs"]["oneOf"] if b["type"] == "array")
    assert (many["minItems"], many["maxItems"], many["items"]["maxLength"]) == (1, 3, 50)
    top_k = schema["$defs"]["FillParameters"]["properties"]["top_k"]
    assert top_k["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert top_k["default"] == 5
    assert request_model(Limits(3, 50, 10)) is request_model(LIMITS)  # built once per limits


def samples(m: ServerMetrics) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_metrics_count_with_bounded_labels() -> None:
    pytest.importorskip("prometheus_client")
    m = ServerMetrics()
    m.observe_request("POST", "/", 200, 0.02)
    m.observe_request("POST", "/", 200, 3.0)
    m.observe_request("GET", "/wp-admin", 404, 0.001)  # any unknown path is one label value
    for method in ("BREW", "PROPFIND", "X" * 1000):  # any unknown method too
        m.observe_request(method, "/", 405, 0.001)
    m.batch_size.observe(3)
    m.engine_seconds.inc(0.5)
    m.queue_depth = 7
    got = samples(m)

    def answered(method: str, path: str, status: str) -> float:
        return got[("mlmkit_requests_total", (("method", method), ("path", path),
                                              ("status", status)))]

    assert answered("POST", "/", "200") == 2 and answered("GET", "other", "404") == 1
    assert answered("other", "/", "405") == 3
    assert {dict(k[1]).get("method") for k in got if k[0] == "mlmkit_requests_total"} == {
        "POST", "GET", "other"}
    assert got[("mlmkit_request_duration_seconds_bucket", (("le", "0.025"), ("path", "/")))] == 4
    assert got[("mlmkit_request_duration_seconds_bucket", (("le", "+Inf"), ("path", "/")))] == 5
    assert got[("mlmkit_batch_size_bucket", (("le", "2.0"),))] == 0
    assert got[("mlmkit_batch_size_bucket", (("le", "4.0"),))] == 1
    assert got[("mlmkit_batch_size_sum", ())] == 3 and got[("mlmkit_queue_depth", ())] == 7
    assert got[("mlmkit_engine_seconds_total", ())] == 0.5
    # Each app its own registry: a second one starts from nothing, and nothing clashes.
    assert ("mlmkit_batch_size_sum", ()) in samples(ServerMetrics())
    assert samples(ServerMetrics())[("mlmkit_batch_size_sum", ())] == 0


@pytest.mark.parametrize("kw", [{"max_batch_size": 0}, {"max_queue": -1}, {"max_top_k": 1.5},
                                {"max_wait_ms": -1}, {"body_timeout_s": 0},
                                {"body_timeout_s": float("inf")}, {"max_candidates": 0},
                                {"max_request_candidates": 2.5}, {"max_response_mb": 0},
                                {"max_score_work": 0}])
def test_create_app_refuses_bad_limits(kw) -> None:
    pytest.importorskip("fastapi")
    from mlmkit.serving.app import create_app

    # ServeConfig's rule, named as the caller names it (here the keyword): one rule for
    # `mlmkit serve` and Python callers.
    with pytest.raises(MlmkitError, match=f"^{next(iter(kw))}="):
        create_app(object(), **kw)


def test_module_imports_without_fastapi() -> None:
    blocked = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client")
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            "import mlmkit.serving.app, mlmkit.serving.payload")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_serve_passes_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlmkit.inference.fill
    import mlmkit.serving.app
    from mlmkit.cli.main import build_parser, main

    made, served = {}, {}
    monkeypatch.setattr(mlmkit.inference.fill, "FillMask",
                        lambda path, **kw: made.update(path=path, **kw))
    monkeypatch.setattr(mlmkit.serving.app, "serve", lambda engine, **kw: served.update(kw))
    assert main(["serve", "some/model", "--port", "9001", "--max-batch-size", "8",
                 "--max-wait-ms", "2.5", "--max-queue", "99", "--no-batching",
                 "--body-timeout-s", "3", "--device", "cpu", "--dtype", "float32",
                 "--runtime", "openvino", "--max-candidates", "50",
                 "--max-request-candidates", "500", "--max-response-mb", "2",
                 "--header-timeout-s", "4",
                 "--max-connections", "20", "--max-score-work", "5000"]) == 0
    assert made == {"path": "some/model", "device": "cpu", "dtype": "float32",
                    "runtime": "openvino", "batch_size": 8}
    assert served == {"host": "127.0.0.1", "port": 9001, "max_batch_size": 8,
                      "max_wait_ms": 2.5, "max_queue": 99, "batching": False,
                      "body_timeout_s": 3.0, "max_inputs": 64, "max_text_chars": 2000,
                      "max_top_k": 100, "max_candidates": 50, "max_request_candidates": 500,
                      "max_response_mb": 2.0, "header_timeout_s": 4.0, "max_connections": 20,
                      "max_score_work": 5000}
    from mlmkit.cli.flags import settings_from
    from mlmkit.config import ServeConfig

    cfg = settings_from(ServeConfig, build_parser().parse_args(["serve", "m"]))
    assert (cfg.host, cfg.port, cfg.no_batching, cfg.body_timeout_s) == ("127.0.0.1", 8000,
                                                                         False, 10.0)


@pytest.mark.parametrize("flags, message", [
    (["--max-batch-size", "0"], "--max-batch-size 0: expected an integer >= 1"),
    (["--max-wait-ms", "-1"], "--max-wait-ms -1.0: expected a finite number >= 0"),
])
def test_cli_serve_refuses_bad_limits_by_their_flag_before_loading(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, flags, message) -> None:
    pytest.importorskip("fastapi")
    import mlmkit.inference.fill
    from mlmkit.cli.main import main

    made = []
    monkeypatch.setattr(mlmkit.inference.fill, "FillMask", lambda path, **kw: made.append(kw))
    assert main(["serve", "some/model", *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert made == []  # no model loaded for a setting that was never going to work
