"""How the server holds its connections: uvicorn's configuration, with a deadline for each
request's headers and a bound on the connections open at once.

uvicorn bounds neither. Its `timeout_keep_alive` runs only between an answer and the next
request's first byte, so a client that connects and sends nothing, or half a request line, is
held for as long as it likes; an ASGI middleware cannot help, as it runs only once the headers
are complete. Its `limit_concurrency` answers 503 to a request that arrives while too many
connections or tasks are open, but a connection that never finishes its headers is never a
request, so it is not turned away. Both bounds are added here to uvicorn's own HTTP protocol
class (h11 or httptools, whichever it picks), by subclassing it.

uvicorn is imported inside the functions, so this module imports without the `serve` extra.
"""

from __future__ import annotations

import json
from typing import Any


def server_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info", header_timeout_s: float = 10.0,
                  max_connections: int = 256, **uvicorn_options: Any) -> Any:
    """A `uvicorn.Config` for `app` whose connections get `header_timeout_s` seconds to send
    each request's headers (answered 408 and closed past it), at most `max_connections` of
    them open at once (one more is answered 503 and closed)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        http=guarded_protocol(AutoHTTPProtocol, header_timeout_s, max_connections),
        # uvicorn counts the connection a request came on among those open: one more than
        # ours, so that its 503 is for tasks still running for connections already gone.
        limit_concurrency=max_connections + 1, **uvicorn_options)


def _refusal(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, in the server's error shape."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(base: type, header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's HTTP protocol class `base` (h11's or httptools'), bounded: a connection past
    `max_connections` is refused as it opens, and one whose request headers are not complete
    within `header_timeout_s` seconds of its opening, or of its last answer, is closed."""

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _deadline: Any = None
        _cycle: Any = None

        # uvicorn's protocols set `self.cycle` exactly when a request's headers are complete
        # (and to None at first): the one moment both share, so the deadline is disarmed here.
        @property
        def cycle(self) -> Any:
            return self._cycle

        @cycle.setter
        def cycle(self, value: Any) -> None:
            self._cycle = value
            if value is not None:
                self._disarm()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse(503, "Service Unavailable", f"server busy: {max_connections} "
                             "connections are open; retry later")
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers have as long as the first's had

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_late(self) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request (pipelined) came whole meanwhile and is being answered
            self._refuse(408, "Request Timeout", "request headers not complete after "
                         f"{header_timeout_s:g} s")

        def _refuse(self, status: int, reason: str, message: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(_refusal(status, reason, message))
                self.transport.close()

    return GuardedProtocol
