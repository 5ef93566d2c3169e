"""One thread that owns ExLlamaV2's dynamic generator and feeds each job's consumer.

ExLlamaV2's generator is not thread-safe, and its async wrapper runs the blocking
``iterate()`` (forward pass and sampling) on the event loop, must be created inside the loop
and stops for good after any exception. So one dedicated thread here does everything that
touches the generator: it starts queued jobs, cancels the ones whose consumer asked, calls
``iterate()``, and turns each result dict into typed events for that job's
:class:`~.handoff.ThreadedJob` (the only place ExLlamaV2's dicts are read).

Text is assembled here from token bytes with :class:`~.stop.TextStream`, as on the CPU
backend, so stop sequences and split UTF-8 behave the same on both; the generator itself only
stops on the model's stop tokens. A job that matches a stop sequence is cancelled in the
generator at once, freeing its cache pages before the next forward pass.

When ``iterate()`` raises, the jobs that were running in the batch fail, jobs the generator
had not started yet are queued again, and the generator is rebuilt with an empty page table.
A constraint that fails fails its job only (see :mod:`.exllamav2_filter`).

Nothing here imports torch or ExLlamaV2: the backend passes the generator and a function that
prepares each job, so this loop is tested on the CPU with a scripted generator.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import EngineError, GenerationFailed
from .exllamav2_filter import GrammarFilterCore
from .handoff import ThreadedJob, wakes_deferred
from .protocol import Delta, Finish, FinishReason, TokenLogprob, TopLogprob, Usage
from .stop import TextStream

logger = logging.getLogger(__name__)

#: ExLlamaV2's ``eos_reason`` values, as our finish reasons. ``stop_string`` never occurs:
#: jobs get no stop strings (they are matched here).
_REASONS: Mapping[str, FinishReason] = {
    "stop_token": "eos",
    "end_filter": "eos",
    "max_new_tokens": "length",
}


class NativeGenerator(Protocol):
    """The part of ``ExLlamaV2DynamicGenerator`` the driver uses."""

    pending_jobs: list[Any]

    def enqueue(self, job: Any) -> int: ...

    def cancel(self, job: Any) -> None: ...

    def iterate(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class SampledLogprob:
    """Recorded when a token is sampled: its log probability under the model's own
    distribution, and the most likely tokens (id, log probability), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(slots=True)
class PreparedJob:
    """A job made ready for the generator by the backend."""

    #: The ``ExLlamaV2DynamicJob``, created with ``identifier=`` the :class:`ThreadedJob`.
    native: Any
    prompt_tokens: int
    #: Prompt tokens whose cache pages were reused so far (read at the job's end).
    cached_tokens: Callable[[], int]
    constraint: GrammarFilterCore | None = None
    #: Filled by the sampling hook when the request wants log probabilities.
    logprobs: deque[SampledLogprob] | None = None


@dataclass(slots=True)
class _Running:
    job: ThreadedJob
    prepared: PreparedJob
    text: TextStream
    produced: int = 0
    cached: int | None = None
    top_logprobs: int = 0


class GeneratorDriver:
    """Runs jobs through one generator on a dedicated thread.

    ``make_generator(previous)`` builds the generator (``previous`` is the one that failed,
    for the backend to release); ``prepare(job)`` tokenizes a job and builds its native job,
    raising :class:`EngineError` for a job that cannot run; ``pieces`` maps token ids to
    their bytes.
    """

    def __init__(
        self,
        make_generator: Callable[[NativeGenerator | None], NativeGenerator],
        prepare: Callable[[ThreadedJob], PreparedJob],
        pieces: Sequence[bytes],
        *,
        name: str = "exloop-exllamav2",
    ) -> None:
        self._make_generator = make_generator
        self._prepare = prepare
        self._pieces = pieces
        self._generator: NativeGenerator | None = make_generator(None)
        self._broken: str | None = None
        self._running: dict[ThreadedJob, _Running] = {}
        self._inbox: queue.SimpleQueue[ThreadedJob | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: ThreadedJob) -> None:
        """Queue a job; the thread starts it before its next iteration."""
        self._inbox.put(job)

    def counts(self) -> tuple[int, int]:
        """Jobs (running, queued), read without locking: a snapshot for monitoring."""
        generator = self._generator
        pending = len(generator.pending_jobs) if generator is not None else 0
        return max(0, len(self._running) - pending), pending + self._inbox.qsize()

    def close(self) -> None:
        """Cancel every job and stop the thread (blocks until it has stopped)."""
        self._inbox.put(None)
        self._thread.join()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            block = not self._running
            try:
                while (item := self._inbox.get(block=block)) is not None:
                    self._start(item)
                    block = False
                self._stop_all()
                return
            except queue.Empty:
                pass
            self._reap_cancelled()
            if not self._running or self._generator is None:
                continue
            try:
                results = self._generator.iterate()
            except Exception as exc:  # noqa: BLE001  (one bad batch must not end the server)
                self._recover(exc)
                continue
            with wakes_deferred():
                for result in results:
                    self._dispatch(result)
            self._reap_failed_constraints()

    def _start(self, job: ThreadedJob) -> None:
        if job.cancel_requested:
            job.finish(Finish(reason="cancelled", usage=Usage(0, 0)))
            return
        if self._generator is None:
            job.fail(GenerationFailed(f"The GPU generator is out of service: {self._broken}"))
            return
        try:
            prepared = self._prepare(job)
            self._generator.enqueue(prepared.native)
        except EngineError as exc:
            job.fail(exc)
            return
        except Exception as exc:
            logger.exception("preparing a generation job failed")
            job.fail(GenerationFailed(f"Cannot start the job: {exc}"))
            return
        sampling = job.request.sampling
        self._running[job] = _Running(
            job=job,
            prepared=prepared,
            text=TextStream(sampling.stop),
            top_logprobs=sampling.top_logprobs if sampling.logprobs else 0,
        )

    def _reap_cancelled(self) -> None:
        for run in [r for r in self._running.values() if r.job.cancel_requested]:
            self._end(run, "cancelled")

    def _reap_failed_constraints(self) -> None:
        for run in list(self._running.values()):
            constraint = run.prepared.constraint
            if constraint is not None and constraint.error is not None:
                self._fail(run, GenerationFailed(f"Constraint failed: {constraint.error}"))

    def _stop_all(self) -> None:
        for run in list(self._running.values()):
            self._end(run, "cancelled")

    # -- results -------------------------------------------------------------------------

    def _dispatch(self, result: Mapping[str, Any]) -> None:
        run = self._running.get(result.get("identifier"))  # type: ignore[arg-type]
        stage = result.get("stage")
        if run is not None and stage == "started":
            # The generator took the job from its queue: it has cache pages now.
            run.job.start()
        if run is None or stage != "streaming":
            # Results of a job this thread already ended; "prefill" progress.
            return
        try:
            tokens = _token_ids(result.get("token_ids"))
            eos = bool(result.get("eos"))
            reason: FinishReason | None = None
            if eos:
                name = str(result.get("eos_reason"))
                reason = _REASONS.get(name)
                if reason is None:
                    raise GenerationFailed(
                        f"The generator ended a job for an unknown reason {name!r}."
                    )
                held = _token_ids(result.get("held", {}).get("token_ids"))
                if name == "stop_token":
                    held = held[:-1]  # the stop token ends the turn; it is not output
                tokens += held
                run.cached = int(result.get("cached_tokens", 0))
            if self._push(run, tokens):
                return
            if reason is not None:
                self._finish(run, reason)
        except EngineError as exc:
            self._fail(run, exc)

    def _push(self, run: _Running, tokens: list[int]) -> bool:
        """Emit ``tokens`` as one delta; True when a stop sequence ended the job."""
        if not tokens:
            return False
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        taken = 0
        for token_id in tokens:
            taken += 1
            run.produced += 1
            parts.append(run.text.push(self._piece(token_id)))
            if run.prepared.logprobs is not None:
                logprobs.append(self._logprob(run, token_id))
            if run.text.stopped_by is not None:
                break
        run.job.emit(
            Delta(text="".join(parts), token_ids=tuple(tokens[:taken]), logprobs=tuple(logprobs))
        )
        if run.text.stopped_by is not None:
            self._end(run, "stop")
            return True
        return False

    def _logprob(self, run: _Running, token_id: int) -> TokenLogprob:
        records = run.prepared.logprobs
        record = records.popleft() if records else None
        if record is None or record.token_id != token_id:
            raise GenerationFailed(f"No log probability was recorded for token {token_id}.")
        piece = self._piece(token_id)
        return TokenLogprob(
            token=piece.decode("utf-8", errors="replace"),
            token_id=token_id,
            logprob=record.logprob,
            bytes=tuple(piece),
            top=tuple(
                TopLogprob(
                    token=self._piece(t).decode("utf-8", errors="replace"),
                    token_id=t,
                    logprob=lp,
                    bytes=tuple(self._piece(t)),
                )
                for t, lp in record.top[: run.top_logprobs]
            ),
        )

    def _piece(self, token_id: int) -> bytes:
        return self._pieces[token_id] if 0 <= token_id < len(self._pieces) else b""

    # -- ending jobs ---------------------------------------------------------------------

    def _end(self, run: _Running, reason: FinishReason) -> None:
        """End a job the generator may still hold: cancel it there, freeing its pages."""
        if self._holds(run) and self._cancel_native(run):
            self._finish(run, reason)

    def _finish(self, run: _Running, reason: FinishReason) -> None:
        del self._running[run.job]
        if reason != "stop":
            # Text held back for a possible stop sequence or a split character.
            tail = run.text.finish()
            if tail:
                run.job.emit(Delta(text=tail))
        cached = run.cached if run.cached is not None else run.prepared.cached_tokens()
        run.job.finish(
            Finish(
                reason=reason,
                usage=Usage(run.prepared.prompt_tokens, run.produced, cached),
                stop_sequence=run.text.stopped_by,
            )
        )

    def _fail(self, run: _Running, error: EngineError) -> None:
        if self._holds(run) and self._cancel_native(run):
            del self._running[run.job]
            run.job.fail(error)

    def _holds(self, run: _Running) -> bool:
        """Whether ``run`` is still this thread's to end (a recovery may have ended or
        requeued it while a loop over the running jobs was under way)."""
        return self._running.get(run.job) is run

    def _cancel_native(self, run: _Running) -> bool:
        """Remove the job from the generator; False when that failed and the generator was
        rebuilt (the job has then been failed or requeued already)."""
        if self._generator is not None:
            try:
                # A job the generator finished already is simply not found there.
                self._generator.cancel(run.prepared.native)
            except Exception as exc:  # noqa: BLE001  (a failed cancel is a generator fault)
                self._recover(exc)
                return False
        return True

    def _recover(self, exc: Exception) -> None:
        """After a generator failure: fail the jobs it was running, requeue the others and
        build a fresh generator."""
        logger.error("ExLlamaV2 generator failed; restarting it", exc_info=exc)
        failed = self._generator
        waiting = {id(native) for native in failed.pending_jobs} if failed is not None else set()
        runs, self._running = list(self._running.values()), {}
        try:
            self._generator = self._make_generator(failed)
        except Exception as rebuild:
            logger.exception("ExLlamaV2 generator cannot restart")
            self._generator = None
            self._broken = str(rebuild)
        error = GenerationFailed(f"Generation failed on the GPU: {exc}")
        for run in runs:
            if id(run.prepared.native) in waiting and self._generator is not None:
                self._start(run.job)
            else:
                run.job.fail(error)


def _token_ids(value: Any) -> list[int]:
    """Token ids from a result's ``(1, n)`` tensor (anything with ``tolist()``)."""
    if value is None:
        return []
    rows = value.tolist()
    return [int(t) for t in rows[0]] if rows else []
