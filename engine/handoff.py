"""A generation job produced by a worker thread and consumed by an async task.

Backends generate on a dedicated thread; the orchestrator reads events on the event loop.
:class:`ThreadedJob` is the hand-off between the two. The worker appends events under a lock
and wakes the consumer only when it is actually waiting, so while the consumer is busy tokens
pile up and are handed over as one batch (consecutive deltas are merged into one).

The wake-up goes through ``loop.call_soon_threadsafe``, which returns at once: anyio's
``from_thread.run_sync`` would block the worker until the loop ran the callback, stalling
generation whenever the loop is busy with other requests. This ties the consumer to the
asyncio backend, which is what the server runs on.

Each ``call_soon_threadsafe`` writes to the loop's self-pipe and wakes its thread (about
0.1 ms here). A worker that emits for many jobs at once (a batched decoding step) holds the
wake-ups back (:class:`HeldWakes`, :func:`wakes_deferred`), so that a step wakes each loop
once, not once per job, and at a moment of its choosing.

On asyncio's own loop that write releases the GIL, and the loop it wakes takes it at once and
keeps it while it handles the tokens, so the worker stalls there before its next native call.
A worker whose next step is a long native call (``llama_decode``) hands its wake-ups to a
:class:`Waker` thread instead: that thread needs the GIL to send them, gets it when the worker
releases it for the native call, and the loop then runs while the worker computes. uvloop
signals its loop from C without releasing the GIL, so the worker wakes it itself, and the loop
waits for the GIL until that native call: the same order without the thread's hop (its
wake-up, its turn with the GIL) on cores that llama.cpp's threads fill.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import EngineError
from .protocol import Delta, Finish, GenerationRequest, JobEvent, Started

if TYPE_CHECKING:
    from .constraints import CompiledGrammar


@dataclass(frozen=True, slots=True)
class _Failure:
    error: EngineError


class ThreadedJob:
    """A :class:`~exloop.engine.protocol.GenerationJob` fed by a worker thread.

    Worker side: :meth:`start` when the job gets its place, :meth:`emit`, then exactly one
    of :meth:`finish` or :meth:`fail`; poll :attr:`cancel_requested` before every token.
    Consumer side: :meth:`events` and :meth:`cancel`.
    """

    def __init__(
        self, request: GenerationRequest, compiled_constraint: CompiledGrammar | None
    ) -> None:
        self.request = request
        #: The constraint as compiled by the engine's grammar compiler, when one is set.
        self.compiled_constraint = compiled_constraint
        self._lock = threading.Lock()
        self._pending: list[JobEvent | _Failure] = []
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._closed = False
        self._iterated = False
        self._cancel_requested = False
        self._started = False

    # -- consumer side -------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the worker to stop before its next token; idempotent."""
        self._cancel_requested = True

    async def events(self) -> AsyncIterator[JobEvent]:
        """:class:`Started`, deltas, then one :class:`Finish`; raises the job's
        :class:`EngineError` if it failed. Leaving early (break, cancellation) cancels the
        job."""
        if self._iterated:
            raise RuntimeError("A generation job's events can be iterated only once.")
        self._iterated = True
        loop = asyncio.get_running_loop()
        finished = False
        try:
            while True:
                with self._lock:
                    batch, self._pending = self._pending, []
                    if not batch:
                        waiter: asyncio.Future[None] = loop.create_future()
                        self._waiter = (loop, waiter)
                if not batch:
                    await waiter
                    continue
                for item in _merge_deltas(batch):
                    if isinstance(item, _Failure):
                        finished = True
                        raise item.error
                    if isinstance(item, Finish):
                        finished = True
                        yield item
                        return
                    yield item
        finally:
            if not finished:
                # The consumer went away (cancelled, or stopped iterating): free the worker.
                self.cancel()

    # -- worker side ---------------------------------------------------------------------

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def start(self) -> None:
        """The job left the queue: its consumer gets :class:`Started` (once)."""
        if not self._started:
            self._started = True
            self._put(Started())

    def emit(self, delta: Delta) -> None:
        self._put(delta)

    def finish(self, finish: Finish) -> None:
        self._put(finish)
        self._closed = True

    def fail(self, error: EngineError) -> None:
        self._put(_Failure(error))
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`finish` or :meth:`fail` was called."""
        return self._closed

    def _put(self, item: JobEvent | _Failure) -> None:
        if self._closed:
            raise RuntimeError("The job already ended.")
        with self._lock:
            self._pending.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        held: HeldWakes | None = getattr(_deferred, "held", None)
        if held is not None:
            held.hold(_Wake(self, *waiter))
        else:
            _wake_all([_Wake(self, *waiter)])


class Arrivals:
    """How many requests are on their way to an engine (:meth:`Engine.arriving`): counted
    on the event loop, read by a worker thread deciding whether to wait for them."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def coming(self) -> Iterator[None]:
        """One more on its way while the block runs."""
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


@dataclass(frozen=True, slots=True)
class _Wake:
    job: ThreadedJob
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


#: Per worker thread: the :class:`HeldWakes` collecting its wake-ups, while one is holding.
_deferred = threading.local()


class Waker:
    """A thread that sends wake-ups handed to it by a worker (see the module doc); the
    worker must :meth:`close` it once it emits no more."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[list[_Wake] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, wakes: list[_Wake]) -> None:
        """Queue ``wakes``; returns at once, holding the GIL throughout."""
        if wakes:
            self._queue.put(wakes)

    def close(self) -> None:
        """Send what is queued, then stop the thread (blocks until it has)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (wakes := self._queue.get()) is not None:
            _wake_all(wakes)


class HeldWakes:
    """Consumers' wake-ups held back by one worker thread until :meth:`release`, which
    sends them itself or, given a :class:`Waker`, through it."""

    def __init__(self, waker: Waker | None = None) -> None:
        self._wakes: list[_Wake] = []
        self._waker = waker

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Inside the block, what this thread emits is queued at once as usual, but wakes
        nobody until :meth:`release` (which may be called inside the block too)."""
        _deferred.held = self
        try:
            yield
        finally:
            _deferred.held = None

    def hold(self, wake: _Wake) -> None:
        self._wakes.append(wake)

    def release(self) -> None:
        """Wake every held consumer, in the order they were held, each event loop once (the
        waker sends them unless every loop keeps the GIL while it is woken)."""
        wakes, self._wakes = self._wakes, []
        if self._waker is not None and not all(_wakes_keeping_gil(w.loop) for w in wakes):
            self._waker.send(wakes)
        else:
            _wake_all(wakes)


@contextmanager
def wakes_deferred() -> Iterator[None]:
    """Hold back the wake-ups of what this thread emits inside the block, and wake each
    event loop once at its end."""
    held = HeldWakes()
    try:
        with held.holding():
            yield
    finally:
        held.release()


def _wake_all(wakes: list[_Wake]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Wake]] = {}
    for wake in wakes:
        by_loop.setdefault(wake.loop, []).append(wake)
    for loop, waking in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, [wake.future for wake in waking])
        except RuntimeError:
            # The consumers' loop is closed; nobody is left to read these jobs.
            for wake in waking:
                wake.job.cancel()


def _wakes_keeping_gil(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop.call_soon_threadsafe`` returns without releasing the GIL: uvloop's does
    (it signals the loop from C), asyncio's writes to a socket, which releases it."""
    return type(loop).__module__ == "uvloop"


def _set_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _merge_deltas(items: list[JobEvent | _Failure]) -> list[JobEvent | _Failure]:
    """Consecutive deltas as one, so a batch costs the consumer one event."""
    merged: list[JobEvent | _Failure] = []
    for item in items:
        last = merged[-1] if merged else None
        if isinstance(item, Delta) and isinstance(last, Delta):
            merged[-1] = Delta(
                text=last.text + item.text,
                token_ids=last.token_ids + item.token_ids,
                logprobs=last.logprobs + item.logprobs,
            )
        else:
            merged.append(item)
    return merged
