"""The worker-to-consumer hand-off: batching, failure, cancellation."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import anyio
import pytest

from exloop.engine.errors import GenerationFailed
from exloop.engine.handoff import HeldWakes, ThreadedJob, Waker, wakes_deferred
from exloop.engine.protocol import Delta, Finish, GenerationRequest, Started, TokenPrompt, Usage

pytestmark = pytest.mark.anyio


def _job() -> ThreadedJob:
    return ThreadedJob(GenerationRequest(TokenPrompt((1,))), None)


async def test_pending_deltas_arrive_merged_in_order() -> None:
    job = _job()
    for i in range(5):
        job.emit(Delta(text=str(i), token_ids=(i,)))
    job.finish(Finish(reason="length", usage=Usage(1, 5)))
    events = [event async for event in job.events()]
    assert events == [
        Delta(text="01234", token_ids=(0, 1, 2, 3, 4)),
        Finish(reason="length", usage=Usage(1, 5)),
    ]


async def test_started_comes_once_before_the_deltas() -> None:
    job = _job()
    job.start()
    job.emit(Delta(text="a", token_ids=(1,)))
    job.start()
    job.finish(Finish(reason="eos", usage=Usage(1, 1)))
    events = [event async for event in job.events()]
    assert events == [
        Started(),
        Delta(text="a", token_ids=(1,)),
        Finish(reason="eos", usage=Usage(1, 1)),
    ]


async def test_events_from_another_thread_wake_the_consumer() -> None:
    job = _job()

    def produce() -> None:
        for i in range(50):
            job.emit(Delta(text="x", token_ids=(i,)))
        job.finish(Finish(reason="eos", usage=Usage(1, 50)))

    thread = threading.Thread(target=produce)
    thread.start()
    tokens: list[int] = []
    with anyio.fail_after(5):
        async for event in job.events():
            if isinstance(event, Delta):
                tokens.extend(event.token_ids)
    thread.join()
    assert tokens == list(range(50))


async def test_a_batched_step_wakes_its_consumers_once_at_its_end() -> None:
    jobs = [_job() for _ in range(3)]
    streams = [job.events() for job in jobs]
    # Each consumer waits for its first event.
    reads = [asyncio.ensure_future(anext(stream)) for stream in streams]
    await asyncio.sleep(0)
    in_block = threading.Event()
    leave = threading.Event()

    def step() -> None:
        with wakes_deferred():
            for i, job in enumerate(jobs):
                job.emit(Delta(text=str(i), token_ids=(i,)))
            in_block.set()
            leave.wait(5)

    thread = threading.Thread(target=step)
    thread.start()
    await anyio.to_thread.run_sync(in_block.wait)
    await asyncio.sleep(0.05)
    # Every event is queued, but nobody was woken before the step ended.
    assert not any(read.done() for read in reads)
    leave.set()
    with anyio.fail_after(5):
        first = [await read for read in reads]
    thread.join()
    assert first == [Delta(text=str(i), token_ids=(i,)) for i in range(3)]
    for stream in streams:
        await stream.aclose()


@pytest.mark.parametrize(
    ("anyio_backend", "sender"),
    [
        pytest.param("asyncio", "test-wake", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), "test-worker", id="uvloop"),
    ],
)
async def test_a_waker_thread_sends_a_held_step_s_wakes(sender: str) -> None:
    """On asyncio's loop the worker hands its step's wake-ups to the waker and goes on at
    once; they arrive from the waker's thread, and closing the waker sends what was still
    queued. uvloop's loop is woken without the GIL changing hands, so the worker sends them
    itself."""
    jobs = [_job() for _ in range(2)]
    streams = [job.events() for job in jobs]
    reads = [asyncio.ensure_future(anext(stream)) for stream in streams]
    await asyncio.sleep(0)
    waker = Waker("test-wake")
    senders: list[str] = []
    loop = asyncio.get_running_loop()
    original = loop.call_soon_threadsafe

    def recording(*args: object) -> object:
        senders.append(threading.current_thread().name)
        return original(*args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = recording  # type: ignore[method-assign]
    try:

        def step() -> None:
            held = HeldWakes(waker)
            with held.holding():
                for i, job in enumerate(jobs):
                    job.emit(Delta(text=str(i), token_ids=(i,)))
                held.release()
            waker.close()

        thread = threading.Thread(target=step, name="test-worker")
        thread.start()
        with anyio.fail_after(5):
            first = [await read for read in reads]
        thread.join()
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    assert first == [Delta(text=str(i), token_ids=(i,)) for i in range(2)]
    assert senders == [sender]  # one wake for the loop
    for stream in streams:
        await stream.aclose()


async def test_failure_raises_from_events() -> None:
    job = _job()
    job.emit(Delta(text="partial"))
    job.fail(GenerationFailed("boom"))
    seen: list[object] = []
    with pytest.raises(GenerationFailed, match="boom"):
        async for event in job.events():
            seen.append(event)
    assert seen == [Delta(text="partial")]


async def test_closing_the_iterator_early_cancels_the_job() -> None:
    job = _job()
    job.emit(Delta(text="a"))
    async with aclosing(job.events()) as events:
        async for _event in events:
            break
    assert job.cancel_requested


async def test_cancelled_consumer_cancels_the_job() -> None:
    job = _job()
    with anyio.move_on_after(0.05):
        async for _event in job.events():
            pass
    assert job.cancel_requested


async def test_events_iterate_once() -> None:
    job = _job()
    job.finish(Finish(reason="eos", usage=Usage(1, 0)))
    assert [e async for e in job.events()]
    with pytest.raises(RuntimeError):
        async for _event in job.events():
            pass
