"""Answers that outlive the request handler, and what happens when their client goes away.

As Starlette's ``StreamingResponse`` does, a stream runs two tasks in one task group: the
writer and a watcher of the ASGI ``receive`` channel. When the client disconnects, the
watcher calls ``on_disconnect`` (for a response run that means ``orchestrator.abort``: the
run's cancel scope is the one cancellation path) and stops the writer; when the writer ends,
the watcher is cancelled. Non-streaming handlers that wait for a run use the same watcher.

BlackSheep sends a :class:`~blacksheep.StreamedContent` by iterating an async generator in the
request's task, so the generator's ``yield`` must never sit where another task could cancel
it: the writer runs as a child task feeding a memory stream, the generator only reads that
stream, and the children never raise into the group (so only the generator's own code ever
cancels its scope).

While the writer has nothing to send for ``keepalive`` seconds (prefill, a queue, a web
search), the stream sends an SSE comment line, ``: keep-alive``, which clients ignore but
which keeps proxies and load balancers from cutting an idle connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream
from blacksheep import Request, Response, StreamedContent
from blacksheep.contents import ASGIContent

log = logging.getLogger("exloop.server")

T = TypeVar("T")
OnDisconnect = Callable[[], Awaitable[None]]

#: Chunks the writer may run ahead of the socket.
_BUFFER = 64
#: An SSE comment: clients skip it, proxies see traffic.
KEEPALIVE = b": keep-alive\n\n"


def check_disconnect_support() -> None:
    """Make sure this BlackSheep keeps the ASGI receive channel on a request's content (not
    public API), which :func:`wait_for_disconnect` reads; raise :class:`RuntimeError` at
    start-up if not, rather than serve streams whose dropped clients are never noticed."""

    async def probe() -> dict[str, object]:
        return {"type": "http.disconnect"}

    if getattr(ASGIContent(probe), "receive", None) is not probe:
        raise RuntimeError(
            "This BlackSheep version does not keep the ASGI receive channel on "
            "request.content.receive, so client disconnects could not be noticed; install a "
            "BlackSheep that does (2.x does)."
        )


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone (ASGI ``http.disconnect``)."""
    content = request.content
    if not isinstance(content, ASGIContent):
        raise RuntimeError("The request is not an ASGI request: its disconnect cannot be seen.")
    # The ASGI receive channel BlackSheep keeps on the request's content.
    receive = content.receive
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


def event_stream(
    request: Request,
    chunks: AsyncGenerator[bytes, None],
    *,
    on_disconnect: OnDisconnect | None = None,
    keepalive: float | None = None,
    media_type: bytes = b"text/event-stream",
) -> Response:
    """A streamed response of ``chunks``; a client disconnect calls ``on_disconnect`` (if
    given) and stops the stream. With ``keepalive``, a :data:`KEEPALIVE` comment goes out
    whenever that many seconds pass without a chunk."""

    async def body() -> AsyncIterator[bytes]:
        send, receive = anyio.create_memory_object_stream[bytes](_BUFFER)
        writer_scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write, chunks, send, writer_scope)
            tg.start_soon(_watch, request, on_disconnect, writer_scope)
            async with receive:
                while (chunk := await _next(receive, keepalive)) is not None:
                    yield chunk
            tg.cancel_scope.cancel()

    response = Response(200, None, StreamedContent(media_type, body))
    response.add_header(b"Cache-Control", b"no-cache")
    response.add_header(b"X-Accel-Buffering", b"no")
    return response


async def _next(receive: MemoryObjectReceiveStream[bytes], keepalive: float | None) -> bytes | None:
    """The next chunk, :data:`KEEPALIVE` after ``keepalive`` idle seconds, None at the end."""
    try:
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        if keepalive is None:
            return await receive.receive()
        with anyio.move_on_after(keepalive):
            return await receive.receive()
        return KEEPALIVE
    except anyio.EndOfStream:
        return None


async def _write(
    chunks: AsyncGenerator[bytes, None],
    send: ObjectSendStream[bytes],
    scope: anyio.CancelScope,
) -> None:
    with scope:
        async with send, aclosing(chunks):
            try:
                async for chunk in chunks:
                    await send.send(chunk)
            except anyio.BrokenResourceError:
                pass  # the reader is gone: the response ended
            except Exception:
                log.exception("stream writer failed")


async def _watch(
    request: Request, on_disconnect: OnDisconnect | None, writer: anyio.CancelScope
) -> None:
    try:
        await wait_for_disconnect(request)
        if on_disconnect is not None:
            await on_disconnect()
    except Exception:
        log.exception("disconnect handling failed")
    writer.cancel()


async def unless_disconnected(
    request: Request, work: Callable[[], Awaitable[T]], on_disconnect: OnDisconnect
) -> T:
    """Await ``work()``; if the client disconnects first, await ``on_disconnect()`` (which
    should make ``work`` finish, as aborting a run does) and still return ``work``'s result."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_for_disconnect(request)
            await on_disconnect()

        tg.start_soon(watch)
        result = await work()
        tg.cancel_scope.cancel()
    return result
