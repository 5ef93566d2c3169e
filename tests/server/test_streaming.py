"""The pipe between a stream's writer and its response body: what is ready goes out in one
piece, a full pipe holds the writer back, and either side's end frees the other."""

from __future__ import annotations

import anyio
import pytest

from exloop.server import streaming
from exloop.server.streaming import KEEPALIVE, _keep_alive, _LastChunk, _Pipe

pytestmark = pytest.mark.anyio

#: Waits here end on events; this bound only turns a bug that would hang into a failure.
HANG_GUARD = 10


async def test_the_reader_takes_what_is_ready_joined_then_the_end() -> None:
    pipe = _Pipe(8)
    for chunk in (b"a", b"b", b"c"):
        assert await pipe.put(chunk)
    pipe.close()
    assert not pipe.open
    assert await pipe.take() == b"abc"
    assert await pipe.take() is None
    assert not await pipe.put(b"late")  # nothing goes in after the writer's end


async def test_a_waiting_reader_wakes_for_the_next_chunk() -> None:
    pipe = _Pipe(8)
    taken: list[bytes | None] = []

    async def read() -> None:
        while (chunk := await pipe.take()) is not None:
            taken.append(chunk)
        taken.append(None)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            assert await pipe.put(b"one")
            await anyio.wait_all_tasks_blocked()
            assert await pipe.put(b"two")
            await anyio.wait_all_tasks_blocked()
            pipe.close()
    assert taken == [b"one", b"two", None]


async def test_a_full_pipe_holds_the_writer_until_the_reader_takes() -> None:
    pipe = _Pipe(2)
    assert await pipe.put(b"1") and await pipe.put(b"2")
    # A keep-alive is dropped rather than waited for: the client is not reading.
    assert not pipe.offer(KEEPALIVE)
    put: list[bool] = []

    async def write() -> None:
        put.append(await pipe.put(b"3"))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            assert put == []  # waiting for room
            assert await pipe.take() == b"12"
    assert put == [True]
    assert await pipe.take() == b"3"


async def test_a_writer_held_back_stops_when_the_reader_leaves() -> None:
    pipe = _Pipe(1)
    assert await pipe.put(b"1")
    put: list[bool] = []

    async def write() -> None:
        put.append(await pipe.put(b"2"))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            pipe.leave()
    assert put == [False]
    assert not pipe.open and not pipe.offer(KEEPALIVE)


class _Clock:
    """A monotonic clock that moves on by ``step`` seconds each time it is read: time passing
    between two readings, as it does when a thread waits for the GIL in between."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


async def test_keep_alives_go_out_however_the_clock_moves_between_readings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keep-alive loop that read the clock once to decide to wait on and again to say how
    long asked for a negative sleep (anyio refuses it, and the stream broke: uvloop's early
    timers made that common). The clock here crosses the deadline between two readings."""
    clock = _Clock(step=1e-4)
    monkeypatch.setattr(streaming, "time", clock)
    pipe = _Pipe(8)
    sent = b""
    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_alive, pipe, _LastChunk(0.0), 1.05e-3)
            while sent.count(KEEPALIVE) < 3:
                sent += await pipe.take() or b""
            pipe.close()
    assert sent == KEEPALIVE * sent.count(KEEPALIVE)
