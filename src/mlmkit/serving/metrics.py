"""What the server tells its operator: Prometheus metrics (`ServerMetrics`, in a registry of
each app's own) and `RequestMiddleware`, which gives every request an id, counts and times it,
and turns a crash into a 500 naming that id while the traceback goes to the log.

prometheus_client is imported inside the functions, so this module imports without the
`serve` extra installed.
"""

import logging
import secrets
import time
from typing import Any

# The whole server logs under this one name (its historical one), whichever module speaks, so
# an operator's filter and level for it still catch everything.
log = logging.getLogger("mlmkit.serving.app")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_PATHS = frozenset({"/", "/fill-mask", "/score", "/health", "/metrics", "/docs",
                    "/openapi.json"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                      "CONNECT"})


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
        self.dropped_texts = Counter("mlmkit_dropped_texts", "Texts taken out of the queue "
                                     "unrun because their client went away.",
                                     registry=self.registry)
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


class RequestMiddleware:
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
