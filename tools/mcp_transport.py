"""The HTTP transport under MCP connections to servers a request names: the page fetcher's SSRF
rule, connections pinned to the checked address, and a cap on what a server may send.

The ``mcp`` SDK speaks HTTP through ``httpx2`` and follows redirects itself (within the
endpoint's origin), so the guard sits in the transport, where every request of a connection
passes: each one resolves its host, refuses internal addresses (unless private addresses are
allowed), and is sent to the address it checked, with the original ``Host`` header and TLS
server name, so a DNS answer that changes between the check and the connection (rebinding)
cannot redirect it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from .errors import FetchError
from .fetch import resolve_host


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2`` transport that checks and pins every request's address and caps the
    bytes of each response body (``max_response_bytes``).

    ``guarded=False`` keeps the pinning and the cap but lets private and loopback addresses
    through (``--fetch-allow-private``). A refused address raises ``httpx2.ConnectError``
    whose cause is the ``BlockedAddress``; :meth:`refusal` keeps its message for the caller.
    """

    def __init__(self, *, guarded: bool, max_response_bytes: int) -> None:
        self._guarded = guarded
        self._max_bytes = max_response_bytes
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False)
        self.refusal: str | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        host = url.host
        try:
            addresses = await resolve_host(
                host, url.port, str(url), guarded=self._guarded, action="connect to"
            )
        except FetchError as exc:
            self.refusal = str(exc)
            raise httpx2.ConnectError(str(exc), request=request) from exc
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        address = addresses[0]
        pinned = httpx2.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # keeps the original Host header
            stream=request.stream,
            extensions=extensions,
        )
        response = await self._inner.handle_async_request(pinned)
        response.stream = _CappedStream(response.stream, self._max_bytes)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that fails once it passes ``limit`` bytes."""

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._seen = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._seen += len(chunk)
            if self._seen > self._limit:
                raise httpx2.ReadError(
                    f"The MCP server sent more than the {self._limit}-byte limit."
                )
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
