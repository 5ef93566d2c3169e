"""The pipe between a stream's writer and its response body: what is ready goes out in one
piece, a full pipe holds the writer back, and either side's end frees the other."""

from __future__ import annotations

import anyio
import pytest

from exloop.server.streaming import KEEPALIVE, _Pipe

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
