"""HTTP serving of a masked LM: `create_app(...)` builds a FastAPI app that speaks the Hugging
Face Inference API's fill-mask protocol and scores sentences (`POST /score`, pseudo-log-
likelihood), checks each request on its own (`payload`), gathers the valid ones into batches
for one engine call (`FillMask` or `Scorer`, sharing one model), bounds its queue, gives every
response a request id and exports Prometheus metrics; `serve(...)` runs it.

FastAPI, prometheus_client and uvicorn are imported inside the functions, so
`import mlmkit.serving.app` works without the `serve` extra installed.
"""

import asyncio
import logging
import math
import secrets
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmkit.errors import MlmkitError
from mlmkit.serving.page import render_page
from mlmkit.serving.payload import (
    ApiError,
    Limits,
    parse_request,
    parse_score_request,
    read_body,
    request_model,
    score_request_model,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("mlmkit.serving.app")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_PATHS = frozenset({"/", "/fill-mask", "/score", "/health", "/metrics", "/docs",
                    "/openapi.json"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                      "CONNECT"})


# ---------------------------------------------------------------------------- metrics


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own rather than prometheus_client's
    global one, so that each app (a process may hold several, as the tests do) counts its own.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mlmkit_requests", "HTTP requests answered, by method, path and "
                                "status.", ["method", "path", "status"], registry=self.registry)
        self.latency = Histogram("mlmkit_request_duration_seconds", "Time from request to "
                                 "response, by path.", ["path"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("mlmkit_batch_size", "Texts per FillMask engine call.",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        # Busy time of the engine: its rate is the engine's utilisation.
        self.engine_seconds = Counter("mlmkit_engine_seconds", "Time spent in FillMask engine "
                                      "calls.", registry=self.registry)
        self.queue_depth = 0  # texts accepted and not yet answered; read by /health too
        Gauge("mlmkit_queue_depth", "Texts accepted and not yet answered.",
              registry=self.registry).set_function(lambda: self.queue_depth)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        # Label values bounded whatever is asked: a scanner's made-up methods and paths would
        # otherwise each add series until the scrape (and the process) grows without end.
        method = method if method in _METHODS else "other"
        path = path if path in _PATHS else "other"
        self.requests.labels(method, path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition as (body, content type), in the format the `Accept` header asks for
        (Prometheus' text format unless a scraper asks for OpenMetrics)."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


_INTERNAL_ERROR_BODY = '{{"error": "internal error (request id {})"}}'


class _RequestMiddleware:
    """Gives every request an id (the `X-Request-ID` response header), counts and times every
    response, and turns any exception into a fixed 500 naming that id, with the traceback
    logged once: the client learns nothing of the server's insides, the operator finds the
    failure by the id. A pure ASGI middleware, because BaseHTTPMiddleware would add a task and
    a stream copy to every request."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request_id = secrets.token_hex(8)
        status = None

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Not re-raised: Starlette's and uvicorn's handlers would log the traceback again.
            log.exception("%s %r failed (request id %s)", scope["method"], scope["path"],
                          request_id)
            if status is None:  # else the response is cut short; nothing more can be said
                body = _INTERNAL_ERROR_BODY.format(request_id).encode()
                await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe_request(scope["method"], scope["path"], status or 500,
                                         time.perf_counter() - t0)


# ---------------------------------------------------------------------------- batching


@dataclass
class _Job:
    texts: list[str]
    # ("fill", top_k, targets) or ("score", metric, per_token): jobs with equal parameters
    # share an engine call
    params: tuple
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers the texts of concurrent requests into batches of at most `max_batch_size` texts
    (waiting at most `max_wait_ms` for more once one has arrived) and runs each batch through
    the engine on one worker thread, so torch never blocks the event loop. With
    `batching=False` every request is its own engine call, which is what the benchmark
    compares against."""

    def __init__(self, engine: Any, metrics: ServerMetrics, max_batch_size: int,
                 max_wait_ms: float, max_queue: int, batching: bool,
                 scorer: Any = None) -> None:
        self.engine = engine
        self.scorer = scorer
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.batching = batching
        # One thread: a second would only make two torch calls fight over the same cores.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlmkit-engine")
        self._jobs: deque[_Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return self.metrics.queue_depth

    async def submit(self, texts: list[str], top_k: int,
                     targets: tuple[str, ...] | None) -> list:
        """The engine's results for `texts` (a list, or an `MlmkitError` per unfillable text)."""
        return await self._submit(texts, ("fill", top_k, targets))

    async def submit_score(self, texts: list[str], metric: str, per_token: bool) -> list:
        """The scorer's records for `texts` (a dict, or an `MlmkitError` per unscorable text),
        in the same queue and batches as fill-mask requests."""
        return await self._submit(texts, ("score", metric, per_token))

    async def _submit(self, texts: list[str], params: tuple) -> list:
        if self.pending + len(texts) > self.max_queue:
            raise ApiError(503, f"server busy: {self.pending} texts are queued and this request "
                                f"adds {len(texts)}, past the limit of {self.max_queue}; retry "
                                "later")
        self._ensure_started()
        job = _Job(texts, params, self._loop.create_future())  # type: ignore[union-attr]
        self.metrics.queue_depth += len(texts)
        self._jobs.append(job)
        self._wakeup.set()  # type: ignore[union-attr]
        return await job.future

    def _ensure_started(self) -> None:
        # Started on first use rather than at app startup: httpx's ASGITransport sends no
        # lifespan events, and a test client may run the app in a loop of its own.
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="mlmkit-batcher")

    async def close(self) -> None:
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self, batch: list[_Job]) -> None:
        """Move jobs from the queue into `batch` (owned by the caller, so that a shutdown in
        the middle of gathering still answers the jobs already taken)."""
        while not self._jobs:
            self._wakeup.clear()  # type: ignore[union-attr]
            await self._wakeup.wait()  # type: ignore[union-attr]
        batch.append(self._jobs.popleft())
        if not self.batching:
            return
        size = len(batch[0].texts)
        deadline = self._loop.time() + self.max_wait_s  # type: ignore[union-attr]
        while size < self.max_batch_size:
            if self._jobs:
                # A request is never split: one that does not fit opens the next batch.
                if size + len(self._jobs[0].texts) > self.max_batch_size:
                    break
                job = self._jobs.popleft()
                batch.append(job)
                size += len(job.texts)
                continue
            remaining = deadline - self._loop.time()  # type: ignore[union-attr]
            if remaining <= 0:
                break
            self._wakeup.clear()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)  # type: ignore[union-attr]
            except asyncio.TimeoutError:
                break

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Job] = []
        try:
            while True:
                batch = []
                await self._next_batch(batch)
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._fill, batch)
                except Exception as e:  # e.g. the executor shut down: fail this batch only
                    outcomes = [e] * len(batch)
                for job, outcome in zip(batch, outcomes):
                    self._finish(job, outcome)
                batch = []
        except asyncio.CancelledError:
            stopping = ApiError(503, "server shutting down")
            for job in [*batch, *self._jobs]:
                self._finish(job, stopping)
            self._jobs.clear()
            raise

    def _finish(self, job: _Job, outcome: Any) -> None:
        self.metrics.queue_depth -= len(job.texts)
        if job.future.done():  # the client went away
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _fill(self, batch: list[_Job]) -> list:
        """Runs on the worker thread: one engine call per distinct parameters in the batch
        (one call in the usual case, where clients send the same parameters)."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(batch):
            groups[job.params].append(i)
        outcomes: list[Any] = [None] * len(batch)
        for params, members in groups.items():
            jobs = [batch[i] for i in members]
            for i, outcome in zip(members, self._fill_group(jobs, params)):
                outcomes[i] = outcome
        return outcomes

    def _fill_group(self, jobs: list[_Job], params: tuple) -> list:
        """The outcome of each of `jobs`, which share their parameters, from one engine call.
        If the call raises (other than an `MlmkitError`, which is about the shared parameters
        and so everyone's answer), each job runs again on its own: one request the engine
        chokes on gets the error, the others their answers."""
        try:
            results = self._call([t for job in jobs for t in job.texts], params)
        except MlmkitError as e:
            return [e] * len(jobs)
        except Exception as e:
            if len(jobs) == 1:
                return [e]
            # No traceback here: the request that fails alone logs it, once.
            log.warning("an engine call for %d requests failed (%s); running each alone",
                        len(jobs), type(e).__name__)
            return [self._call_or_error(job.texts, params) for job in jobs]
        outcomes, start = [], 0
        for job in jobs:
            outcomes.append(results[start:start + len(job.texts)])
            start += len(job.texts)
        return outcomes

    def _call_or_error(self, texts: list[str], params: tuple) -> Any:
        try:
            return self._call(texts, params)
        except Exception as e:
            return e

    def _call(self, texts: list[str], params: tuple) -> list:
        self.metrics.batch_size.observe(len(texts))
        t0 = time.perf_counter()
        try:
            if params[0] == "score":
                return list(self.scorer.stream(texts, metric=params[1], per_token=params[2]))
            _, top_k, targets = params
            return list(self.engine.stream(texts, top_k=top_k,
                                           targets=list(targets) if targets else None))
        finally:
            self.metrics.engine_seconds.inc(time.perf_counter() - t0)


# ---------------------------------------------------------------------------- the app


def create_app(engine_or_model_path: Any, *, max_batch_size: int = 32, max_wait_ms: float = 5,
               max_queue: int = 256, max_inputs: int = 64, max_text_chars: int = 2000,
               max_top_k: int = 100, batching: bool = True,
               body_timeout_s: float = 10.0) -> "FastAPI":
    """A FastAPI app serving fill-mask for a `FillMask` engine (or a model directory/Hub id,
    loaded with `FillMask(path, batch_size=max_batch_size)`).

    `POST /` and `POST /fill-mask` take the Hugging Face Inference API payload
    `{"inputs": str | [str], "parameters": {"top_k": int, "targets": [str]}}` and answer with
    the pipeline's records, so `huggingface_hub.InferenceClient(base_url=...)` works as is.
    Past `max_queue` texts waiting, requests get 503 at once instead of waiting without bound;
    a body not all received within `body_timeout_s` seconds gets 408. `GET /` is a page to
    try the model in a browser.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    for name, value in [("max_batch_size", max_batch_size), ("max_queue", max_queue),
                        ("max_inputs", max_inputs), ("max_text_chars", max_text_chars),
                        ("max_top_k", max_top_k)]:
        if not isinstance(value, int) or value < 1:
            raise MlmkitError(f"{name} {value!r}: expected a positive integer")
    if not (isinstance(max_wait_ms, (int, float)) and 0 <= max_wait_ms < math.inf):
        raise MlmkitError(f"max_wait_ms {max_wait_ms!r}: expected a number of milliseconds >= 0")
    if not (isinstance(body_timeout_s, (int, float)) and 0 < body_timeout_s < math.inf):
        raise MlmkitError(f"body_timeout_s {body_timeout_s!r}: expected a number of seconds > 0")

    if isinstance(engine_or_model_path, (str, Path)):
        from mlmkit.inference.fill import FillMask

        engine = FillMask(str(engine_or_model_path), batch_size=max_batch_size)
        model_name = str(engine_or_model_path)
    else:
        engine = engine_or_model_path
        model_name = str(getattr(getattr(getattr(engine, "model", None), "config", None),
                                 "_name_or_path", "") or type(engine).__name__)
    # Its last part only: /health is for anyone who can reach the port, the directory layout
    # of the machine is not.
    model_name = Path(model_name).name
    tokenizer = getattr(engine, "tokenizer", None)
    mask_token = getattr(tokenizer, "mask_token", None)
    vocab_size = len(tokenizer) if tokenizer is not None else None
    limits = Limits(max_inputs, max_text_chars, max_top_k)
    metrics = ServerMetrics()
    scorer, no_scorer = _scorer_for(engine)
    batcher = Batcher(engine, metrics, max_batch_size, max_wait_ms, max_queue, batching,
                      scorer)

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
    app.state.limits = limits
    app.add_middleware(_RequestMiddleware, metrics=metrics)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        if status == 503:
            headers = {**(headers or {}), "Retry-After": "1"}
        # Escaped: a message may quote a client's lone surrogate, which UTF-8 cannot encode.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404/405 in the same {"error": ...} shape as every other refusal.
        return error(exc.status_code, str(exc.detail), exc.headers)

    async def fill_mask(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, limits, body_timeout_s)
            texts, single, top_k, targets = parse_request(body, limits, mask_token, vocab_size)
            results = await batcher.submit(texts, top_k, targets)
        except ApiError as e:
            return error(e.status, e.message)
        except MlmkitError as e:  # raised by the engine for the whole request (e.g. targets)
            return error(400, str(e))
        for i, r in enumerate(results):
            if isinstance(r, MlmkitError):
                return error(422, str(r) if single else f"'inputs'[{i}]: {r}")
        return JSONResponse(results[0] if single else results)

    async def score(request: Request) -> JSONResponse:
        if scorer is None:
            return error(501, f"this server cannot score sentences: {no_scorer}")
        try:
            body = await read_body(request, limits, body_timeout_s)
            texts, single, metric, per_token = parse_score_request(body, limits)
            results = await batcher.submit_score(texts, metric, per_token)
        except ApiError as e:
            return error(e.status, e.message)
        except MlmkitError as e:
            return error(400, str(e))
        for i, r in enumerate(results):
            if isinstance(r, MlmkitError):
                return error(422, str(r) if single else f"'inputs'[{i}]: {r}")
        return JSONResponse(results[0] if single else results)

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
            spec = FastAPI.openapi(app)  # builds and caches app.openapi_schema
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    page, page_headers = render_page(model_name, mask_token, max_top_k)

    @app.get("/", response_class=HTMLResponse, summary="Fill-mask playground (HTML page)")
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/health", summary="Liveness and queue state")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "queue_depth": metrics.queue_depth,
                "max_queue": max_queue, "batching": batching}

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    return app


def _scorer_for(engine: Any) -> tuple[Any, str]:
    """A `Scorer` on the fill engine's own model and tokenizer (no second copy in memory), or
    None and why not."""
    import torch

    model, tokenizer = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
    if not isinstance(model, torch.nn.Module) or tokenizer is None:
        return None, f"the engine {type(engine).__name__} has no model and tokenizer to share"
    from mlmkit.inference.score import Scorer
    from mlmkit.modeling.load import DTYPES

    dtype = next((name for name, t in DTYPES.items() if t == model.dtype), "float32")
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
            (413, "over a size limit"),
            (422, "a text the model cannot take (too many tokens"
                  + (", or nothing to score)" if route == "score" else ")")),
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
          **limits: Any) -> None:
    """Serve `model` (a `FillMask` or a model path) with uvicorn until interrupted; `limits` are
    `create_app`'s keyword arguments. Loopback only unless `host` says otherwise."""
    import uvicorn

    app = create_app(model, **limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
