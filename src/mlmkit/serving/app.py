"""HTTP serving of a masked LM: `create_app(...)` builds a FastAPI app that speaks the Hugging
Face Inference API's fill-mask protocol and scores sentences (`POST /score`, pseudo-log-
likelihood), checks each request on its own (`payload`), gathers the valid ones into batches
for one engine call (`batcher`; `FillMask` and `Scorer` share one model), bounds its queue,
gives every response a request id and exports Prometheus metrics (`metrics`); `serve(...)`
runs it.

FastAPI, prometheus_client and uvicorn are imported inside the functions, so
`import mlmkit.serving.app` works without the `serve` extra installed.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.config import ServeConfig
from mlmkit.errors import MlmkitError
from mlmkit.serving.batcher import Batcher
from mlmkit.serving.connections import server_config
from mlmkit.serving.metrics import RequestMiddleware, ServerMetrics
from mlmkit.serving.page import render_page
from mlmkit.serving.payload import (
    ApiError,
    Limits,
    check_score_work,
    parse_request,
    parse_score_request,
    read_body,
    request_model,
    score_request_model,
)
from mlmkit.settings import named

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse


# The settings of `ServeConfig` that shape the app; the others (host, port, and how uvicorn
# holds connections) are `serve`'s.
APP_LIMITS = ("max_batch_size", "max_wait_ms", "max_queue", "max_inputs", "max_text_chars",
              "max_top_k", "max_candidates", "max_request_candidates", "max_response_mb",
              "max_score_work",
              "body_timeout_s")


def check_limits(**limits: Any) -> ServeConfig:
    """The server's settings, `ServeConfig`'s defaults where not given; a value out of its
    range is refused in one line naming it: the rule `mlmkit serve` checks its flags with
    before loading a model."""
    unknown = sorted(set(limits) - set(APP_LIMITS) - {"device", "dtype", "runtime"})
    if unknown:
        raise TypeError(f"unexpected server setting(s) {', '.join(unknown)}; expected "
                        f"{', '.join(APP_LIMITS)}")
    return ServeConfig(**limits)


def create_app(engine_or_model_path: Any, *, batching: bool = True, device: str = "auto",
               dtype: str = "auto", runtime: str = "torch", **limits: Any) -> "FastAPI":
    """A FastAPI app serving fill-mask for a `FillMask` engine (or a model directory/Hub id,
    loaded with `FillMask(path, device, dtype, batch_size=max_batch_size, runtime=runtime)`:
    `dtype` "int8" with `runtime` "openvino" is the fastest on a CPU, see `mlmkit fill
    --dtype`); `limits` are `ServeConfig`'s fields named in `APP_LIMITS`, its defaults where
    not given.

    `POST /` and `POST /fill-mask` take the Hugging Face Inference API payload
    `{"inputs": str | [str], "parameters": {"top_k": int, "targets": [str]}}` and answer with
    the pipeline's records, so `huggingface_hub.InferenceClient(base_url=...)` works as is.
    Past `max_queue` texts waiting, requests get 503 at once instead of waiting without bound;
    a body not all received within `body_timeout_s` seconds gets 408; a request asking for
    more candidates (masks x top_k) than its limits gets 413 or 422 before any work. `GET /`
    is a page to try the model in a browser.
    """
    from fastapi import FastAPI

    cfg = check_limits(device=device, dtype=dtype, runtime=runtime, **limits)
    engine, model_name = _engine_and_name(engine_or_model_path, cfg)
    metrics = ServerMetrics()
    engines, no_scorer = _engines(engine)
    batcher = Batcher(engines, metrics, cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queue,
                      batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title="mlmkit fill-mask server", version=_version(), lifespan=lifespan,
                  description="Hugging Face Inference API compatible fill-mask, and "
                              "pseudo-log-likelihood scoring at /score, with dynamic "
                              "batching. Errors are `{\"error\": \"...\"}`; every response "
                              "carries an `X-Request-ID`, which a 500 names.")
    app.state.engine = engine
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.limits = Limits(cfg.max_inputs, cfg.max_text_chars, cfg.max_top_k,
                              cfg.max_candidates, cfg.max_request_candidates,
                              cfg.max_response_mb, cfg.max_score_work)
    app.add_middleware(RequestMiddleware, metrics=metrics)
    _add_task_routes(app, cfg.body_timeout_s, no_scorer)
    _add_info_routes(app, model_name, getattr(engine, "precision", None),
                     getattr(engine, "runtime", "torch"), cfg.max_queue, batching)
    return app


def _engine_and_name(engine_or_model_path: Any, cfg: ServeConfig) -> tuple[Any, str]:
    """The fill engine (loaded if given a path) and the model's name as /health shows it."""
    if isinstance(engine_or_model_path, (str, Path)):
        from mlmkit.inference.fill import FillMask

        engine = FillMask(str(engine_or_model_path), device=cfg.device, dtype=cfg.dtype,
                          batch_size=cfg.max_batch_size, runtime=cfg.runtime)
        model_name = str(engine_or_model_path)
    else:
        if (cfg.device, cfg.dtype, cfg.runtime) != ("auto", "auto", "torch"):
            raise MlmkitError("device, dtype and runtime are the engine's: give them to "
                              "FillMask(..., device=..., dtype=..., runtime=...), or pass a "
                              "model path here")
        engine = engine_or_model_path
        model_name = str(getattr(getattr(getattr(engine, "model", None), "config", None),
                                 "_name_or_path", "") or type(engine).__name__)
    # Its last part only: /health is for anyone who can reach the port, the directory layout
    # of the machine is not.
    return engine, Path(model_name).name


def _engines(engine: Any) -> tuple[dict[type, Any], str]:
    """The server's engines by class, as the tasks name them: the fill engine, and a `Scorer`
    on its model where it has one (else why not, for the 501)."""
    from mlmkit.inference.fill import FillMask
    from mlmkit.inference.score import Scorer

    scorer, no_scorer = _scorer_for(engine)
    engines = {FillMask: engine}
    if scorer is not None:
        engines[Scorer] = scorer
    return engines, no_scorer


def _error(status: int, message: str, headers: dict | None = None) -> "JSONResponse":
    """Every refusal's shape: `{"error": message}`."""
    from fastapi.responses import JSONResponse

    if status == 503:
        headers = {**(headers or {}), "Retry-After": "1"}
    # Escaped: a message may quote a client's lone surrogate, which UTF-8 cannot encode.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_task_routes(app: "FastAPI", body_timeout_s: float, no_scorer: str) -> None:
    """POST /, /fill-mask and /score: read, check, queue, answer; one handler for every task,
    the parse function saying which."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    batcher, limits = app.state.batcher, app.state.limits
    tokenizer = getattr(app.state.engine, "tokenizer", None)
    mask_token = getattr(tokenizer, "mask_token", None)
    vocab_size = len(tokenizer) if tokenizer is not None else None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404/405 in the same {"error": ...} shape as every other refusal.
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def answer(request: Request, parse: Callable[[bytes], tuple]) -> JSONResponse:
        try:
            body = await read_body(request, limits, body_timeout_s)
            texts, single, params = parse(body)
            results = await _unless_gone(request, batcher.submit(texts, params))
        except ApiError as e:
            return _error(e.status, e.message)
        except MlmkitError as e:  # raised by the engine for the whole request (e.g. targets)
            return _error(400, str(e))
        if results is None:  # nobody to tell; the status is for the log and the metrics
            return _error(499, "client disconnected before the answer was ready")
        for i, r in enumerate(results):
            if isinstance(r, MlmkitError):
                return _error(422, str(r) if single else f"'inputs'[{i}]: {r}")
        response = JSONResponse(results[0] if single else results)
        if len(response.body) > limits.max_response_bytes:
            return _error(413, f"an answer of {len(response.body) / 1e6:.2f} MB, more than the "
                               f"server's limit of {limits.max_response_mb:g} MB "
                               f"({named('max_response_mb')}); ask for fewer texts or a "
                               "smaller top_k")
        return response

    async def fill_mask(request: Request) -> JSONResponse:
        return await answer(request, lambda b: parse_request(b, limits, mask_token, vocab_size))

    async def score(request: Request) -> JSONResponse:
        if no_scorer:
            return _error(501, f"this server cannot score sentences: {no_scorer}")
        def parse(body: bytes) -> tuple:
            texts, single, params = parse_score_request(body, limits)
            check_score_work(texts, tokenizer, limits)
            return texts, single, params

        return await answer(request, parse)

    docs, schemas = _request_docs(limits)
    for path in ("/", "/fill-mask"):
        app.add_api_route(path, fill_mask, methods=["POST"], openapi_extra=docs["fill"][0],
                          responses=docs["fill"][1], summary="Fill <mask> in one text or a list",
                          name=f"fill_mask{path.replace('/', '_').rstrip('_')}")
    app.add_api_route("/score", score, methods=["POST"], openapi_extra=docs["score"][0],
                      responses=docs["score"][1], name="score",
                      summary="Pseudo-log-likelihood of one text or a list (mlmkit score)")

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = type(app).openapi(app)  # builds and caches app.openapi_schema
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _unless_gone(request: Any, work: Coroutine) -> Any:
    """`work`'s result, or None as soon as the client hangs up: `work` is then cancelled, which
    takes its texts out of the batcher's queue if they are still waiting there. (Nobody else
    listens for the disconnect while a request waits: uvicorn would otherwise let the work go
    on for a client long gone.)"""
    task = asyncio.ensure_future(work)
    # Once the body is read, the next message of an HTTP request is its disconnect.
    gone = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and gone.exception() is None and gone.result().get(
                "type") == "http.disconnect":
            return None
        return await task  # done, or a server that sent something else: no more to watch
    finally:
        task.cancel()
        gone.cancel()


def _add_info_routes(app: "FastAPI", model_name: str, precision: str | None, runtime: str,
                     max_queue: int, batching: bool) -> None:
    """GET (and HEAD) / (the playground page), /health and /metrics."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, Response

    metrics: ServerMetrics = app.state.metrics
    mask_token = getattr(getattr(app.state.engine, "tokenizer", None), "mask_token", None)
    shown = " · ".join([model_name, *([precision] if precision not in (None, "float32") else []),
                        *([runtime] if runtime != "torch" else [])])
    page, page_headers = render_page(shown, mask_token, app.state.limits.max_top_k)

    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    async def health() -> dict:
        return {"status": "ok", "model": model_name, "precision": precision, "runtime": runtime,
                "queue_depth": metrics.queue_depth,
                "max_queue": max_queue, "batching": batching}

    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    for path, endpoint, response_class, summary in (
            ("/", playground, HTMLResponse, "Fill-mask playground (HTML page)"),
            ("/health", health, None, "Liveness and queue state"),
            ("/metrics", prometheus, Response, "Prometheus metrics")):
        kw = {"response_class": response_class} if response_class else {}
        app.add_api_route(path, endpoint, methods=["GET"], summary=summary, **kw)
        # HEAD wherever GET is, as HTTP asks (monitors, curl -I): the same headers, no body
        # (Starlette leaves it out); not in the schema, which would list each route twice.
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False, **kw)


def _scorer_for(engine: Any) -> tuple[Any, str]:
    """A `Scorer` on the fill engine's own model and tokenizer (no second copy in memory), or
    None and why not."""
    import torch

    from mlmkit.modeling.openvino import OpenVinoMaskedLM

    model, tokenizer = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
    if not isinstance(model, (torch.nn.Module, OpenVinoMaskedLM)) or tokenizer is None:
        return None, f"the engine {type(engine).__name__} has no model and tokenizer to share"
    from mlmkit.inference.score import Scorer
    from mlmkit.modeling.precision import precision_of

    dtype = getattr(engine, "precision", None) or precision_of(model)
    try:
        return Scorer(model, tokenizer, device=str(engine.device), dtype=dtype), ""
    except MlmkitError as e:
        return None, str(e)


def _request_docs(limits: Limits) -> tuple[dict[str, tuple[dict, dict]], dict]:
    """OpenAPI of the POST routes: ({route: (openapi_extra, responses)}, component schemas).
    The body is read and checked by the route itself (streamed, under a size limit and a
    timeout), so FastAPI is only told its schema, taken from the model that does the
    checking."""
    from pydantic import BaseModel

    class ErrorBody(BaseModel):
        error: str

    schemas: dict = {}
    docs = {}
    for route, model, name in (("fill", request_model(limits), "FillRequest"),
                               ("score", score_request_model(limits), "ScoreRequest")):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update({**body.pop("$defs", {}), name: body})
        extra = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{name}"}}}}}
        responses = {status: {"model": ErrorBody, "description": text} for status, text in [
            (400, "bad request"), (408, "body not received in time"),
            (413, "over a size limit (of the body, the texts, the answer"
                  + (")" if route == "score" else ", or the request's candidates)")),
            (415, "not application/json"),
            (422, "a text the model cannot take (too many tokens"
                  + (", or nothing to score)" if route == "score" else
                     ", or more candidates than a text may have)")),
            (500, "internal error; the message names the request id to look for in the log"),
            (503, "queue full; retry later")]}
        if route == "score":
            responses[501] = {"model": ErrorBody, "description": "the model cannot score"}
        docs[route] = (extra, responses)
    return docs, schemas


def _version() -> str:
    from mlmkit import __version__

    return __version__


def serve(model: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          header_timeout_s: float = 10.0, max_connections: int = 256, **limits: Any) -> None:
    """Serve `model` (a `FillMask` or a model path) with uvicorn until interrupted; `limits` are
    `create_app`'s keyword arguments (device and dtype too, for a path), `header_timeout_s` and
    `max_connections` bound how uvicorn holds connections (`connections.server_config`).
    Loopback only unless `host` says otherwise."""
    import uvicorn

    ServeConfig(header_timeout_s=header_timeout_s, max_connections=max_connections)
    app = create_app(model, **limits)
    uvicorn.Server(server_config(app, host=host, port=port, log_level=log_level,
                                 header_timeout_s=header_timeout_s,
                                 max_connections=max_connections)).run()
