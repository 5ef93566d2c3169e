"""Continuous batching on the CPU: many jobs decoded together in one llama.cpp context.

Two threads serve the CPU backend:

* the **preparing** thread takes submitted jobs in order, checks each one's cancel flag, and
  prepares it (tokenizes the prompt, builds its sampler chain and constraint: work that would
  otherwise stall everyone's decoding), then queues it for the batch;
* the **decoding** thread owns the context. Every step it ends the jobs that were cancelled
  (freeing their cells at once), admits waiting jobs in arrival order while one of the
  ``parallel`` slots is free (after an idle spell, the first step waits a moment for the jobs
  the preparing thread has in hand and for requests still on their way to the engine, so
  that a burst starts together), and runs one
  ``llama_decode`` over a batch that holds the last sampled token of every generating job
  plus up to ``chunk`` tokens of prompts still being read, so that a long prompt delays the
  others by one chunk at most. Then each job whose logits were computed samples its next
  token with its own sampler, under its own grammar mask (the batch's masks are computed
  together). What a step emits (tokens, starts, ends) wakes its consumers once, as the next
  step's decode begins.

Admission is strictly first come, first served. Slots and the prefixes they hold are tracked
by :class:`~.prefix_cache.PrefixCache`, which also keeps the running jobs in consecutive slots
(llama.cpp evaluates a step in one pass per run of them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import llama_cpp
import numpy as np
import numpy.typing as npt

from .constraints import BatchMasks
from .errors import EngineError, GenerationFailed
from .handoff import Arrivals, HeldWakes, ThreadedJob, Waker
from .llama_batch import TokenBatch
from .llama_model import LlamaModel
from .llama_sequence import BatchSequence, ReadyJob
from .prefix_cache import MIN_COPY, PrefixCache
from .protocol import Finish, FinishReason, Usage

logger = logging.getLogger(__name__)

Mask = Callable[[npt.NDArray[np.float32]], None]

#: Steps a gap among the running jobs may last before they are moved together, when no job
#: was admitted: the jobs of a burst end a few steps apart, and moving one for its last
#: steps costs a copy and the cached prefix of the slot it lands in.
GATHER_AFTER = 16

#: Seconds the first step after an idle spell waits at most for the rest of a burst (see
#: :meth:`Batcher._collect`).
GATHER_WAIT = 0.03

#: Seconds between two looks at the requests on their way while the first step waits: one
#: that is refused never reaches the engine, and nothing else would say it is not coming.
_ARRIVAL_POLL = 0.002


class LlamaMemory:
    """A context's KV cache, as :class:`~.prefix_cache.PrefixCache` changes it (one stream
    per sequence)."""

    def __init__(self, ctx: llama_cpp.llama_context_p) -> None:
        self._memory = llama_cpp.llama_get_memory(ctx)

    def copy(self, source: int, target: int) -> None:
        # Across streams llama.cpp copies whole streams only (positions -1 to -1).
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def truncate(self, seq_id: int, length: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, length, -1)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)


class Batcher:
    """Runs jobs on one llama.cpp context with continuous batching (see the module doc).

    ``prepare(job)`` makes a job ready for the batch, or returns None when it was cancelled
    meanwhile; it raises :class:`EngineError` for a job that cannot run. ``arrivals`` counts
    the requests on their way to :meth:`submit`.
    """

    def __init__(
        self,
        ctx: llama_cpp.llama_context_p,
        model: LlamaModel,
        memory: LlamaMemory,
        cache: PrefixCache,
        prepare: Callable[[ThreadedJob], ReadyJob | None],
        arrivals: Arrivals,
        *,
        parallel: int,
        chunk: int,
        mask_threads: int | None = None,
    ) -> None:
        if chunk < parallel:
            raise ValueError(f"a step's {chunk} tokens cannot hold {parallel} sequences")
        self._ctx = ctx
        self._model = model
        self._cache = cache
        self._memory = memory
        self._prepare = prepare
        self._arrivals = arrivals
        self.parallel = parallel
        self._batch = TokenBatch(chunk)
        self._masks = BatchMasks(model.n_vocab, threads=mask_threads)
        self._inbox: queue.SimpleQueue[ThreadedJob | None] = queue.SimpleQueue()
        self._ready: queue.SimpleQueue[ReadyJob | None] = queue.SimpleQueue()
        self._waiting: deque[ReadyJob] = deque()
        self._running: list[BatchSequence] = []
        self._waker = Waker("exloop-llama-wake")
        self._wakes = HeldWakes(self._waker)
        #: Steps the running jobs have been split into several runs of slots.
        self._split_steps = 0
        #: Jobs submitted, and jobs the preparing thread is done with (handed over or
        #: ended). Each is written by one thread only, so their difference, the jobs not yet
        #: ready, needs no lock.
        self._submitted = 0
        self._handed_over = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._prepare_jobs, name="exloop-llama-prepare", daemon=True),
            threading.Thread(target=self._decode_jobs, name="exloop-llama-decode", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: ThreadedJob) -> None:
        """Queue ``job``; call it from one thread (the event loop's)."""
        self._submitted += 1
        self._inbox.put(job)

    def counts(self) -> tuple[int, int]:
        """Jobs (running, queued), read without locking: a snapshot for monitoring."""
        queued = self._unready() + self._ready.qsize() + len(self._waiting)
        return len(self._running), queued

    def close(self) -> None:
        """Cancel every job and stop both threads (blocks until they have stopped)."""
        self._stopping = True
        self._inbox.put(None)
        for thread in self._threads:
            thread.join()
        self._waker.close()  # after the last job's end was handed to it

    # -- the preparing thread ----------------------------------------------------------------

    def _prepare_jobs(self) -> None:
        while (job := self._inbox.get()) is not None:
            ready = self._prepared(job)
            if ready is not None:
                self._ready.put(ready)
            # Counted after the hand-over, so that a job is never out of sight of _collect
            # (which at worst looks again a moment later for one it already has).
            self._handed_over += 1
        self._ready.put(None)

    def _unready(self) -> int:
        """Jobs submitted that the preparing thread is not done with."""
        return self._submitted - self._handed_over

    def _prepared(self, job: ThreadedJob) -> ReadyJob | None:
        """``job`` made ready, or None when it ended here (cancelled, or it cannot run)."""
        try:
            if not (self._stopping or job.cancel_requested):
                ready = self._prepare(job)
                if ready is not None:
                    return ready
            job.finish(Finish(reason="cancelled", usage=Usage(0, 0)))
        except EngineError as exc:
            job.fail(exc)
        except Exception as exc:
            logger.exception("preparing a generation job failed")
            job.fail(GenerationFailed(f"Cannot start the job: {exc}"))
        return None

    # -- the decoding thread -----------------------------------------------------------------

    def _decode_jobs(self) -> None:
        while True:
            block = not (self._running or self._waiting)
            if not self._running:
                # No decode is about to start, and _collect may wait (for the first job, or
                # up to GATHER_WAIT for a burst): what the last step emitted goes out now.
                self._wakes.release()
            if not self._collect(block):
                self._wakes.release()
                self._cancel_all()
                return
            try:
                with self._wakes.holding():
                    self._end_cancelled()
                    admitted = self._admit()
                    if self._running:
                        self._gather(admitted > 0)
                        self._step()
            except Exception as exc:  # noqa: BLE001  (one bad step must not end the server)
                logger.exception("a decoding step failed")
                self._fail_all(GenerationFailed(f"Generation failed: {exc}"))

    def _collect(self, block: bool) -> bool:
        """Move the prepared jobs to the waiting line (with ``block``, waiting for the first);
        False once the batcher is to stop.

        When nothing runs, a burst of requests (agents fanning out, a client's concurrent
        calls) reaches the engine over a few tens of milliseconds: the server checks and
        tokenizes them one after the other, more slowly still once llama.cpp's threads hold
        the cores for a step. Starting the first job alone would cost a step of its own,
        after which the others read their prompts beside its first token, and it ends a step
        before them. So while nothing runs and requests are on their way (being checked and
        tokenized by the server, or prepared by the preparing thread), the first step waits
        for them, :data:`GATHER_WAIT` seconds at most. A lone request does not wait: its
        arrival ends as its job is submitted, before the job is prepared."""
        deadline: float | None = None
        while True:
            timeout: float | None = None
            if block and deadline is not None:
                timeout = min(deadline - time.monotonic(), _ARRIVAL_POLL)
                if timeout <= 0:
                    return True
            try:
                ready = self._ready.get(block=block, timeout=timeout)
            except queue.Empty:
                if not block:
                    return True
                # Still coming: wait on. Else take what came since the wait ended (a job is
                # counted as ready only once it is in the queue) without waiting.
                block = self._burst_arriving()
                continue
            if ready is None:
                return False
            self._waiting.append(ready)
            if self._burst_arriving():
                deadline = deadline or time.monotonic() + GATHER_WAIT
                block = True
            else:
                block = False

    def _burst_arriving(self) -> bool:
        """Nothing runs yet, a slot is free, and requests are on their way: in the server,
        or in the preparing thread's hands."""
        return (
            not self._running
            and len(self._waiting) < self.parallel
            and (self._unready() > 0 or self._arrivals.count > 0)
        )

    def _end_cancelled(self) -> None:
        for ready in [r for r in self._waiting if r.job.cancel_requested]:
            self._waiting.remove(ready)
            ready.discard()
            ready.job.finish(Finish(reason="cancelled", usage=Usage(0, 0)))
        for seq in [s for s in self._running if s.job.cancel_requested]:
            self._end(seq, "cancelled")

    def _admit(self) -> int:
        """Start waiting jobs while places are free; how many started."""
        admitted = 0
        while self._waiting and len(self._running) < self.parallel:
            ready = self._waiting[0]
            if self._soon_shared(ready):
                break
            try:
                cells = self._cache.open(ready.prompt)
            except Exception as exc:
                self._waiting.popleft()
                ready.discard()
                ready.job.fail(GenerationFailed(f"Cannot start the job: {exc}"))
                raise  # the slot may be half assigned: start over (see _fail_all)
            if cells is None:
                break  # every slot is busy (cannot happen below ``parallel`` running jobs)
            self._waiting.popleft()
            self._running.append(BatchSequence(ready, cells, self._model))
            ready.job.start()
            admitted += 1
        return admitted

    def _gather(self, admitted: bool) -> None:
        """Keep the running jobs in consecutive slots (see :meth:`PrefixCache.compact`): at
        once when jobs were admitted, else once a gap lasted :data:`GATHER_AFTER` steps."""
        if self._cache.runs <= 1:
            self._split_steps = 0
            return
        self._split_steps += 1
        if not admitted and self._split_steps <= GATHER_AFTER:
            return
        self._split_steps = 0
        moves = dict(self._cache.compact())
        for seq in self._running:
            seq.cells = moves.get(seq.cells, seq.cells)

    def _soon_shared(self, ready: ReadyJob) -> bool:
        """Whether a running job is still reading a prefix this job shares (jobs that arrive
        together with the same system prompt and tools): this job then waits until those
        cells exist and borrows them, rather than evaluating the same prefix beside it.
        Only for a share the job would then copy (:data:`~.prefix_cache.MIN_COPY`): a job
        that would evaluate the prefix anyway must not wait for it."""
        prompt = np.asarray(ready.prompt, dtype=np.int32)
        return any(seq.unread_share(prompt) >= MIN_COPY for seq in self._running)

    def _step(self) -> None:
        """One llama_decode over every generating job's last token and a prompt chunk, then
        a sample for each job whose logits it computed."""
        batch = self._batch
        batch.clear()
        # Every generating job's next token first, then prompt chunks while room is left.
        room = batch.capacity - sum(len(seq.pending) == 1 for seq in self._running)
        chosen: list[tuple[BatchSequence, list[int]]] = []
        for seq in self._running:
            if len(seq.pending) == 1:
                chosen.append((seq, seq.pending[:]))
            elif room:
                chosen.append((seq, seq.pending[:room]))
                room -= len(chosen[-1][1])
        # In seq id order: with a stream per sequence llama.cpp evaluates a batch in one
        # ubatch per run of consecutive seq ids it meets in order, so a shuffled batch of 16
        # jobs costs almost twice the time of the same batch sorted.
        chosen.sort(key=lambda choice: choice[0].cells.seq_id)
        planned: list[tuple[BatchSequence, list[int], int | None]] = []
        for seq, tokens in chosen:
            last = len(tokens) == len(seq.pending)
            row = batch.add(seq.cells.seq_id, tokens, seq.cells.length, logits=last)
            planned.append((seq, tokens, row if last else None))
        # The consumers of the last step's tokens wake as this step's decode begins: the
        # event loop then runs while llama_decode has released the GIL, instead of holding
        # it while this thread builds the batch (measured: 1.8 ms a step against 0.8). The
        # waker thread sends them, so this thread does not give the GIL up to the loop on
        # its way to llama_decode (0.65 ms a step at one stream when it sent them itself).
        self._wakes.release()
        status = batch.decode(self._ctx)
        if status != 0:
            self._fail_all(GenerationFailed(f"llama_decode failed (status {status})."))
            return
        for seq, tokens, _ in planned:
            self._cache.extend(seq.cells, tokens)
            seq.evaluated(len(tokens))
        sampling = [(seq, row) for seq, _, row in planned if row is not None]
        if not sampling:
            return
        masks = self._fill_masks([seq for seq, _ in sampling])
        # One row per job that samples, in batch order, as ``sampling`` is.
        rows = batch.logits(self._ctx, self._model.n_vocab)
        for (seq, row), logits in zip(sampling, rows, strict=True):
            try:
                reason = seq.sample(self._ctx, row, logits, masks.get(seq))
            except EngineError as exc:
                self._fail(seq, exc)
                continue
            if reason is not None:
                self._end(seq, reason)

    def _fill_masks(self, sampling: list[BatchSequence]) -> dict[BatchSequence, Mask]:
        """Each constrained job's mask for this step, computed together."""
        constrained = [seq for seq in sampling if seq.constraint is not None]
        states = [seq.constraint for seq in constrained if seq.constraint is not None]
        if not states:
            return {}
        self._masks.fill(states)
        return {
            seq: partial(self._masks.apply, i, state)
            for i, (seq, state) in enumerate(zip(constrained, states, strict=True))
        }

    # -- ending jobs -------------------------------------------------------------------------

    def _end(self, seq: BatchSequence, reason: FinishReason) -> None:
        """A job ends: a finished one's cells stay cached for reuse, a cancelled one's are
        freed at once."""
        self._running.remove(seq)
        self._cache.close(seq.cells, keep=reason != "cancelled")
        seq.finish(reason)

    def _fail(self, seq: BatchSequence, error: EngineError) -> None:
        self._running.remove(seq)
        self._cache.close(seq.cells, keep=False)
        seq.close()
        seq.job.fail(error)

    def _fail_all(self, error: EngineError) -> None:
        """After a failed step the KV cache may hold half a batch: fail the running jobs and
        start over with an empty cache (waiting jobs then run as usual)."""
        running, self._running = self._running, []
        for seq in running:
            seq.close()
            if not seq.job.closed:
                seq.job.fail(error)
        self._memory.clear()
        self._cache.clear()

    def _cancel_all(self) -> None:
        while self._waiting:
            ready = self._waiting.popleft()
            ready.discard()
            ready.job.finish(Finish(reason="cancelled", usage=Usage(0, 0)))
        for seq in list(self._running):
            self._end(seq, "cancelled")
