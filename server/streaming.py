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
short: the writer hands a chunk over through a :class:`_Pipe` without a checkpoint when it has
room, and the generator joins the chunks that are ready into one socket write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

import anyio
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
        pipe = _Pipe(_BUFFER)
        writer_scope = anyio.CancelScope()
        last = _LastChunk(time.monotonic())
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write, chunks, pipe, writer_scope, last)
            tg.start_soon(_watch, request, on_disconnect, writer_scope)
            if keepalive is not None:
                tg.start_soon(_keep_alive, pipe, last, keepalive)
            try:
                while (chunk := await pipe.take()) is not None:
                    yield chunk
            finally:
                pipe.leave()
            tg.cancel_scope.cancel()

    response = Response(200, None, StreamedContent(media_type, body))
    response.add_header(b"Cache-Control", b"no-cache")
    response.add_header(b"X-Accel-Buffering", b"no")
    return response


@dataclass(slots=True)
class _LastChunk:
    """When the writer last sent a chunk (``time.monotonic()``)."""

    at: float


class _Pipe:
    """Chunks on their way from the writer (and the keep-alive) to the response body: one
    reader, which takes all that is ready at once and waits only when nothing is.

    anyio's memory object stream did this with more work per chunk than a token's whole trip
    through the server can spare: every ``receive`` passed through the event loop once for its
    cancellation check and built an Event and a receiver object (a seventh of the event
    loop's busy time while four streams ran). Here a waiting side makes one Event, and
    nothing else is made per chunk.
    """

    def __init__(self, room: int) -> None:
        self._room = room
        self._ready: list[bytes] = []
        #: The writer is done: no chunk comes after those ready.
        self._closed = False
        #: The reader is gone: chunks would go nowhere.
        self._left = False
        self._more: anyio.Event | None = None  # the reader waits on it
        self._space: anyio.Event | None = None  # the writer waits on it

    @property
    def open(self) -> bool:
        """Chunks may still be put in (neither side has ended)."""
        return not (self._closed or self._left)

    def offer(self, chunk: bytes) -> bool:
        """Put ``chunk`` in if there is room (a keep-alive need not wait); whether it went."""
        if not self.open or len(self._ready) >= self._room:
            return False
        self._ready.append(chunk)
        self._wake_reader()
        return True

    async def put(self, chunk: bytes) -> bool:
        """Put ``chunk`` in, once there is room; False if the reader has gone. (No
        checkpoint when there is room: the writer's source awaits already.)"""
        while self.open and len(self._ready) >= self._room:
            self._space = anyio.Event()
            await self._space.wait()
        return self.offer(chunk)

    def close(self) -> None:
        """The writer is done: the reader takes what is ready, then the end."""
        self._closed = True
        self._wake_reader()

    def leave(self) -> None:
        """The reader is gone: a waiting writer stops waiting, and nothing more goes in."""
        self._left = True
        self._ready.clear()
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self._more is not None:
            self._more.set()
            self._more = None

    def _wake_writer(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = None

    async def take(self) -> bytes | None:
        """The chunks put in since the last call, joined (waits for one), or None at the end.
        After a step or a prefill several are ready at once; they go out in one write."""
        while not self._ready:
            if self._closed:
                return None
            self._more = anyio.Event()
            await self._more.wait()
        ready = self._ready
        self._ready = []
        self._wake_writer()
        return ready[0] if len(ready) == 1 else b"".join(ready)


async def _write(
    chunks: AsyncGenerator[bytes, None],
    pipe: _Pipe,
    scope: anyio.CancelScope,
    last: _LastChunk,
) -> None:
    with scope:
        async with aclosing(chunks):
            try:
                async for chunk in chunks:
                    if not await pipe.put(chunk):
                        return  # the reader is gone: the response ended
                    last.at = time.monotonic()
            except Exception:
                log.exception("stream writer failed")
            finally:
                pipe.close()


async def _keep_alive(pipe: _Pipe, last: _LastChunk, every: float) -> None:
    """Send :data:`KEEPALIVE` whenever ``every`` seconds pass without a chunk; ends with the
    writer or the reader."""
    while pipe.open:
        # One reading of the clock decides both whether to wait and how long: timers may fire
        # a little early (uvloop's run on a clock cached once per loop pass), and a second
        # reading taken after the GIL changed hands could be past the time the first was not.
        quiet = time.monotonic() - last.at
        if quiet < every:
            await anyio.sleep(every - quiet)  # a chunk may go out meanwhile
            continue
        # When the client is not reading (no room), a keep-alive would not reach it either.
        pipe.offer(KEEPALIVE)
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
