"""Grammar compilation in child processes, with a deadline and a memory cap per compile.

A grammar is the client's program: a 6.7 KB JSON schema (150 ``allOf`` patterns) made
llguidance allocate without bound, and 5,000 tools took seconds of CPU. So no grammar is
compiled in the server's process before a worker (:mod:`.grammar_worker`) has compiled it
within the :class:`CompileBudget`: the worker's address space is capped, and a worker that
passes the deadline, dies, or whose caller is cancelled is killed and replaced. Waiting on a
worker happens in a thread, so the event loop never blocks and any event loop can use the
pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO

import anyio
from llguidance import LLTokenizer

from .grammar_worker import (
    Compiled,
    CompileRequest,
    Message,
    Ready,
    Rejected,
    Setup,
    read_frame,
    write_frame,
)

log = logging.getLogger(__name__)

#: Starting a worker (Python, llguidance, the token trie) takes about half a second; a loaded
#: machine may take much longer, and that time is not the grammar's fault.
_STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class CompileBudget:
    """What compiling one grammar may cost, and what compiled grammars may keep."""

    #: Seconds one compile may take (wall clock, in the worker).
    timeout: float = 2.0
    #: Bytes of address space one compile may add to its worker.
    memory: int = 512 << 20
    #: Bytes of compiled grammars (text and a ready matcher) kept for reuse.
    cache_bytes: int = 64 << 20
    #: Worker processes, that is grammars compiled at once.
    workers: int = 2


class BudgetExceeded(Exception):
    """The grammar passed the deadline (``"time"``) or the memory cap (``"memory"``)."""


def vocabulary_setup(tokenizer: LLTokenizer, memory_limit: int) -> Setup:
    """The :class:`Setup` that gives a worker the same token trie as ``tokenizer``."""
    tokens = []
    for token_id in range(tokenizer.vocab_size):
        piece = tokenizer.decode_bytes([token_id])
        tokens.append(b"\xff" + piece if tokenizer.is_special_token(token_id) else piece)
    return Setup(tokens=tokens, eos_tokens=list(tokenizer.eos_tokens), memory_limit=memory_limit)


class _Worker:
    """One worker process; every method blocks (call them in a thread)."""

    def __init__(self, setup: Setup) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "exloop.engine.grammar_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Rust reports a failed allocation on stderr before it aborts.
            stderr=subprocess.DEVNULL,
        )
        # A worker that never answers is killed, which ends the wait for its answer.
        watchdog = threading.Timer(_STARTUP_TIMEOUT, self._process.kill)
        watchdog.start()
        try:
            reply = self._ask(setup)
        except BaseException:
            self.reap()
            raise
        finally:
            watchdog.cancel()
        if not isinstance(reply, Ready):
            self.reap()
            raise RuntimeError(f"grammar worker failed to start (exit {self._process.poll()})")

    def _ask(self, message: Message) -> Message | None:
        stdin, stdout = self._pipes()
        try:
            write_frame(stdin, message)
        except (BrokenPipeError, OSError):
            return None
        return read_frame(stdout)

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout

    def compile(self, request: CompileRequest) -> Compiled | Rejected:
        reply = self._ask(request)
        if isinstance(reply, (Compiled, Rejected)):
            return reply
        # The worker died: the memory cap (Rust aborts on a failed allocation) or a crash.
        status = self._process.wait()
        log.debug("grammar worker exited with %s while compiling", status)
        if status in (-signal.SIGABRT, -signal.SIGKILL, -signal.SIGSEGV):
            raise BudgetExceeded("memory")
        raise RuntimeError(f"grammar worker exited with {status}")

    def kill(self) -> None:
        """Send the kill signal (returns at once; :meth:`reap` waits for the end)."""
        if self._process.returncode is None:
            self._process.kill()

    def reap(self) -> None:
        """Kill the worker if it still runs and wait until it is gone."""
        self.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


class GrammarSandbox:
    """A pool of compile workers for one tokenizer; started on first use."""

    def __init__(self, tokenizer: LLTokenizer, budget: CompileBudget) -> None:
        self.budget = budget
        self._tokenizer = tokenizer
        self._setup: Setup | None = None
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # Per event loop: tests run several loops over one engine.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: anyio.Semaphore | None = None

    async def compile(self, kind: str, value: str) -> Compiled | Rejected:
        """Compile in a worker; raises :class:`BudgetExceeded` past the budget. A caller
        cancelled while its grammar compiles kills that worker."""
        async with self._slot():
            # Not abandoned on cancel: a worker being started would be left behind.
            worker = await anyio.to_thread.run_sync(self._take_worker)
            try:
                with anyio.fail_after(self.budget.timeout):
                    reply = await anyio.to_thread.run_sync(
                        worker.compile, CompileRequest(kind, value), abandon_on_cancel=True
                    )
            except BaseException as exc:
                # Past the deadline, cancelled, the memory cap or a crash: the worker goes.
                # Reaping a process that held gigabytes takes a while: not on the loop.
                worker.kill()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(worker.reap)
                if isinstance(exc, TimeoutError):
                    raise BudgetExceeded("time") from None
                raise
            self._give_back(worker)
            return reply

    def close(self) -> None:
        """Stop every idle worker (a compile in flight stops its own when it ends)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.reap()

    def _slot(self) -> anyio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._loop, self._slots = loop, anyio.Semaphore(self.budget.workers)
        return self._slots

    def _take_worker(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the grammar compiler is closed")
            if self._idle:
                return self._idle.pop()
            if self._setup is None:
                self._setup = vocabulary_setup(self._tokenizer, self.budget.memory)
            setup = self._setup
        return _Worker(setup)

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.budget.workers:
                self._idle.append(worker)
                return
        worker.reap()
