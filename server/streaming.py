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
which keeps proxies and load balancers from cutting an idle connection. A third child task
does it, with one timer per quiet period: a timeout around every wait for the next chunk
cost a cancel scope and a timer per token.

A stream sends a token per chunk at up to a few hundred chunks a second, so the path is kept
short: the writer hands a chunk over without a checkpoint when the buffer has room, and the
generator joins the chunks that are ready into one socket write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
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
        last = _LastChunk(time.monotonic())
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write, chunks, send, writer_scope, last)
            tg.start_soon(_watch, request, on_disconnect, writer_scope)
            if keepalive is not None:
                tg.start_soon(_keep_alive, send, last, keepalive)
            async with receive:
                while (chunk := await _next(receive)) is not None:
                    yield chunk
            tg.cancel_scope.cancel()

    response = Response(200, None, StreamedContent(media_type, body))
    response.add_header(b"Cache-Control", b"no-cache")
    response.add_header(b"X-Accel-Buffering", b"no")
    return response


@dataclass(slots=True)
class _LastChunk:
    """When the writer last sent a chunk (``time.monotonic()``)."""

    at: float


async def _next(receive: MemoryObjectReceiveStream[bytes]) -> bytes | None:
    """The chunks sent since the last call, joined (at least one: waits for it), or None at
    the end. After a step or a prefill several events are ready at once; they go out in one
    write."""
    try:
        try:
            first = receive.receive_nowait()
        except anyio.WouldBlock:
            first = await receive.receive()
    except anyio.EndOfStream:
        return None
    ready: list[bytes] = []
    while True:
        try:
            ready.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return first + b"".join(ready) if ready else first


async def _write(
    chunks: AsyncGenerator[bytes, None],
    send: MemoryObjectSendStream[bytes],
    scope: anyio.CancelScope,
    last: _LastChunk,
) -> None:
    with scope:
        async with send, aclosing(chunks):
            try:
                async for chunk in chunks:
                    try:
                        # No checkpoint when there is room: following the events awaits
                        # already, and a full buffer still waits below.
                        send.send_nowait(chunk)
                    except anyio.WouldBlock:
                        await send.send(chunk)
                    last.at = time.monotonic()
            except anyio.BrokenResourceError:
                pass  # the reader is gone: the response ended
            except Exception:
                log.exception("stream writer failed")


async def _keep_alive(send: MemoryObjectSendStream[bytes], last: _LastChunk, every: float) -> None:
    """Send :data:`KEEPALIVE` whenever ``every`` seconds pass without a chunk; ends with the
    writer (its send stream closed)."""
    while True:
        await anyio.sleep(last.at + every - time.monotonic())
        if time.monotonic() - last.at < every:
            continue  # a chunk went out meanwhile
        try:
            send.send_nowait(KEEPALIVE)
        except anyio.WouldBlock:
            pass  # the client is not reading: a keep-alive would not reach it either
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        last.at = time.monotonic()


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
