"""A scripted engine: plays back prepared outputs, so orchestrator tests run in milliseconds.

Each submitted job takes the next script entry: a callable that sees the request and returns
the text to stream (in small chunks, one per "token"). Stop sequences, ``max_tokens``,
cancellation, a prompt longer than the context and the engine closing behave as the protocol
says, so the orchestrator's handling of each is tested. Jobs set events (first token out,
cancelled) that tests wait on instead of sleeping.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import anyio

from exloop.engine.errors import ContextLengthExceeded
from exloop.engine.handoff import Arrivals
from exloop.engine.protocol import (
    Chat,
    Delta,
    EngineStats,
    Finish,
    GenerationRequest,
    JobEvent,
    ModelInfo,
    Started,
    Usage,
)
from exloop.engine.reasoning import ThinkingSyntax

Script = Callable[[GenerationRequest], str]


def say(text: str) -> Script:
    return lambda request: text


@dataclass
class ScriptedJob:
    request: GenerationRequest
    text: str
    token_delay: float
    #: When given, the job waits for it after its first token.
    hold: anyio.Event | None = None
    #: When given, the job waits for it before it starts (as behind a full batch).
    admit: anyio.Event | None = None
    cancelled: bool = False
    running: bool = False
    emitted_tokens: int = 0
    #: Set once the first token is out, once the job is cancelled, and once it has ended.
    first_token: anyio.Event = field(default_factory=anyio.Event)
    cancelled_event: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    #: The prompt tokens its Finish reports.
    prompt_tokens: int = 0

    def cancel(self) -> None:
        self.cancelled = True
        self.cancelled_event.set()

    async def events(self) -> AsyncIterator[JobEvent]:
        sampling = self.request.sampling
        chunks = [self.text[i : i + 3] for i in range(0, len(self.text), 3)]
        prompt_tokens = self.prompt_tokens = len(_prompt_text(self.request)) // 4 + 1
        out = ""
        sent = 0
        reason = "eos"
        stop_hit = None
        try:
            if self.admit is not None:
                await self.admit.wait()
            if self.cancelled:
                self.ended.set()
                yield Finish(reason="cancelled", usage=Usage(0, 0))
                return
            self.running = True
            yield Started()
            for chunk in chunks:
                if self.cancelled:
                    reason = "cancelled"
                    break
                if sampling.max_tokens is not None and self.emitted_tokens >= sampling.max_tokens:
                    reason = "length"
                    break
                if self.hold is not None and self.emitted_tokens == 1:
                    await self.hold.wait()
                await anyio.sleep(self.token_delay)
                out += chunk
                self.emitted_tokens += 1
                self.first_token.set()
                hits = [(out.find(s), s) for s in sampling.stop if s in out]
                if hits:
                    at, stop_hit = min(hits)
                    yield Delta(text=out[sent:at], token_ids=(0,))
                    reason = "stop"
                    break
                # Hold back a tail that may still grow into a stop sequence, as engines do.
                safe = len(out) - _pending_stop(out, sampling.stop)
                yield Delta(text=out[sent:safe], token_ids=(0,))
                sent = safe
            else:
                if sent < len(out):
                    yield Delta(text=out[sent:])
        except BaseException:
            self.cancel()
            self.ended.set()
            raise
        finally:
            self.running = False
        self.ended.set()
        yield Finish(
            reason=reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=self.emitted_tokens),
            stop_sequence=stop_hit,
        )


def _pending_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that begins some stop sequence."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def _prompt_text(request: GenerationRequest) -> str:
    prompt = request.prompt
    if isinstance(prompt, Chat):
        return "".join(m.content for m in prompt.messages) + prompt.assistant_prefix
    return " " * len(prompt.token_ids) * 4


@dataclass
class ScriptedEngine:
    """Plays ``scripts`` in order; the last one repeats when they run out."""

    scripts: list[Script]
    token_delay: float = 0.0
    context_length: int = 4096
    tool_call_format: str = "exloop"
    #: When given, every job stops after its first token until it is set.
    hold: anyio.Event | None = None
    #: When given, every job waits for it before it starts (a batch with no free place).
    admit: anyio.Event | None = None
    #: Set to play a model that thinks (its scripts then write the think block too).
    thinking: ThinkingSyntax | None = None
    jobs: list[ScriptedJob] = field(default_factory=list)
    submitted: int = 0
    #: Requests on their way (:meth:`arriving`) now, when each chat was counted, and when
    #: each job was submitted.
    arrivals: Arrivals = field(default_factory=Arrivals)
    arriving_when_counted: list[int] = field(default_factory=list)
    arriving_when_submitted: list[int] = field(default_factory=list)
    _new_job: anyio.Event | None = None

    async def job(self, index: int = 0) -> ScriptedJob:
        """The ``index``-th job, once it has been submitted."""
        while len(self.jobs) <= index:
            self._new_job = anyio.Event()
            await self._new_job.wait()
        return self.jobs[index]

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name="scripted",
            backend="llama.cpp",
            context_length=self.context_length,
            chat_template="",
            tool_call_format=self.tool_call_format,
            thinking=self.thinking,
        )

    def render(self, chat: Chat) -> str:
        """The chat as text: the tools' definitions (as templates render them), then the turns."""
        tools = [
            f"tool: {json.dumps([t.name, t.description, dict(t.parameters)])}" for t in chat.tools
        ]
        turns = [f"{m.role}: {m.content}" for m in chat.messages]
        return "\n".join([*tools, *turns]) + chat.assistant_prefix

    async def count_tokens(self, chat: Chat) -> int:
        self.arriving_when_counted.append(self.arrivals.count)
        return len(self.render(chat)) // 4 + 1

    def arriving(self) -> AbstractContextManager[None]:
        return self.arrivals.coming()

    async def check(self, request: GenerationRequest) -> None:
        request.sampling.validate()

    async def submit(self, request: GenerationRequest) -> ScriptedJob:
        await self.check(request)
        prompt = request.prompt
        if isinstance(prompt, Chat) and len(self.render(prompt)) // 4 + 1 >= self.context_length:
            raise ContextLengthExceeded("The prompt does not fit in the context window.")
        script = self.scripts[min(self.submitted, len(self.scripts) - 1)]
        self.submitted += 1
        self.arriving_when_submitted.append(self.arrivals.count)
        job = ScriptedJob(request, script(request), self.token_delay, self.hold, self.admit)
        self.jobs.append(job)
        if self._new_job is not None:
            self._new_job.set()
        return job

    def stats(self) -> EngineStats:
        running = sum(1 for job in self.jobs if job.running)
        queued = sum(1 for job in self.jobs if not (job.running or job.ended.is_set()))
        return EngineStats(running, queued, parallel=1, cache_used=0, cache_size=0)

    async def aclose(self) -> None:
        """Close as a real engine does: every running job ends ``cancelled``."""
        for job in self.jobs:
            job.cancel()
