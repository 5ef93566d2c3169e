"""The ASGI application uvicorn serves: what every request passes before and after the API.

The gateway exists before the model is loaded, so the port opens at once. Until
:meth:`Gateway.open` hands it the API application, ``/health`` answers 503
``{"status": "loading"}`` and every other route 503 in OpenAI's error shape; then it passes
requests on. Around every request it

* gives it an id: the client's ``X-Request-Id`` (cleaned to a safe alphabet and bounded) or a
  new one, returned as ``x-request-id`` on the answer and set in :data:`~.logs.REQUEST_ID`
  so every log line of the request carries it;
* answers CORS preflights and marks answers to allowed origins (``--cors-origins``; none by
  default, so browsers may not call the server from other origins);
* records it in the metrics (by the route pattern the API stores in the ASGI scope under
  :data:`ENDPOINT`) and logs one line when its answer is complete (a stream's last byte).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from .errors import ApiError
from .logs import REQUEST_ID, fields
from .metrics import Metrics

log = logging.getLogger("exloop.server")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
AsgiApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the API puts the pattern of the route that answered (``/v1/responses/{response_id}``).
ENDPOINT = "exloop.endpoint"
UNMATCHED = "unmatched"

MAX_REQUEST_ID = 128
_UNSAFE = re.compile(rb"[^A-Za-z0-9._:/+=@-]")
_METHODS = b"GET, POST, DELETE, OPTIONS"
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Origins a browser may call the server from; ``*`` allows any."""

    origins: frozenset[str]
    #: How long a browser may cache a preflight's answer.
    max_age: int = 600

    @classmethod
    def of(cls, origins: Sequence[str]) -> CorsPolicy | None:
        """The policy for ``--cors-origins``; None (no CORS headers at all) when empty."""
        cleaned = frozenset(origin.strip().rstrip("/") for origin in origins if origin.strip())
        return cls(cleaned) if cleaned else None

    def allows(self, origin: bytes) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if refused."""
        if "*" in self.origins:
            return b"*"
        return origin if origin.decode("latin-1") in self.origins else None


def request_id(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The client's ``X-Request-Id`` cleaned to a safe alphabet and cut at
    :data:`MAX_REQUEST_ID`, or a new id when it sent none (or nothing usable)."""
    for name, value in headers:
        if name == b"x-request-id":
            cleaned = _UNSAFE.sub(b"", value)[:MAX_REQUEST_ID]
            if cleaned:
                return cleaned
    return b"req_" + secrets.token_hex(16).encode()


class Gateway:
    """The served ASGI app; see the module docstring."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        cors: CorsPolicy | None = None,
        observe: bool = True,
    ) -> None:
        self._metrics = metrics
        self._cors = cors
        #: False only for benchmarks' baseline: no request ids, metrics or request log.
        self._observe = observe
        self._app: AsgiApp | None = None

    @property
    def ready(self) -> bool:
        return self._app is not None

    def open(self, app: AsgiApp) -> None:
        """From now on, pass requests to ``app`` (the model is loaded)."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Nothing else (websockets) is served: returning without accepting refuses it.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._observe and self._app is not None and self._cors is None:
            await self._app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        rid = request_id(headers)
        token = REQUEST_ID.set(rid.decode())
        extra = [(b"x-request-id", rid)]
        origin = _header(headers, b"origin")
        allowed = self._cors.allows(origin) if self._cors and origin else None
        if allowed is not None:
            extra += [(b"access-control-allow-origin", allowed), (b"vary", b"Origin")]
            extra.append((b"access-control-expose-headers", b"x-request-id"))
        started = time.perf_counter()
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            if scope["method"] == "OPTIONS" and self._cors and origin:
                await self._preflight(headers, allowed, answer)
            elif self._app is None:
                await _loading(scope["path"], answer)
            else:
                await self._app(scope, receive, answer)
        finally:
            seconds = time.perf_counter() - started
            endpoint = scope.get(ENDPOINT, UNMATCHED)
            if self._metrics is not None:
                self._metrics.request(endpoint, scope["method"], status, seconds)
            if log.isEnabledFor(logging.INFO):
                values = fields(
                    method=scope["method"],
                    path=scope["path"],
                    endpoint=endpoint,
                    status=status,
                    seconds=round(seconds, 4),
                )
                log.info("request", extra=values)
            REQUEST_ID.reset(token)

    async def _preflight(
        self, headers: Sequence[tuple[bytes, bytes]], allowed: bytes | None, send: Send
    ) -> None:
        """204 with what the browser may send; 403 for an origin not allowed."""
        if allowed is None:
            await _send(send, 403, b"", [])
            return
        assert self._cors is not None
        wanted = _header(headers, b"access-control-request-headers")
        await _send(
            send,
            204,
            b"",
            [
                (b"access-control-allow-methods", _METHODS),
                (b"access-control-allow-headers", wanted or b"authorization, content-type"),
                (b"access-control-max-age", str(self._cors.max_age).encode()),
            ],
        )


async def _loading(path: str, send: Send) -> None:
    """The answer while the model loads: 503, ``/health`` in its own shape."""
    retry = [(b"retry-after", b"1")]
    if path == "/health":
        await _send(send, 503, b'{"status":"loading"}', _JSON + retry)
        return
    error = ApiError(
        503, "The model is still loading; retry shortly.", "server_error", None, "model_loading"
    )
    await _send(send, 503, msgspec.json.encode(error.body), _JSON + retry)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None
