"""A scripted engine: plays back prepared outputs, so orchestrator tests run in milliseconds.

Each submitted job takes the next script entry: a callable that sees the request and returns
the text to stream (in small chunks, one per "token"). Stop sequences, ``max_tokens`` and
cancellation behave as the protocol says, so the orchestrator's handling of each is tested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio

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

Script = Callable[[GenerationRequest], str]


def say(text: str) -> Script:
    return lambda request: text


@dataclass
class ScriptedJob:
    request: GenerationRequest
    text: str
    token_delay: float
    cancelled: bool = False
    emitted_tokens: int = 0
    #: When set, the job waits for it before it starts (as behind a full batch).
    hold: anyio.Event | None = None
    waiting: bool = True
    running: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    async def events(self) -> AsyncIterator[JobEvent]:
        sampling = self.request.sampling
        chunks = [self.text[i : i + 3] for i in range(0, len(self.text), 3)]
        prompt_tokens = len(_prompt_text(self.request)) // 4 + 1
        out = ""
        sent = 0
        reason = "eos"
        stop_hit = None
        try:
            if self.hold is not None:
                await self.hold.wait()  # queued until the test lets the job start
            self.waiting = False
            if self.cancelled:
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
                await anyio.sleep(self.token_delay)
                out += chunk
                self.emitted_tokens += 1
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
            self.cancelled = True
            raise
        finally:
            self.waiting = self.running = False
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
    jobs: list[ScriptedJob] = field(default_factory=list)
    submitted: int = 0
    #: Jobs wait for this event before they start, when it is set.
    hold: anyio.Event | None = None
    #: Set once a job has been submitted.
    first_submitted: anyio.Event = field(default_factory=anyio.Event)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name="scripted",
            backend="llama.cpp",
            context_length=self.context_length,
            chat_template="",
            tool_call_format=self.tool_call_format,
        )

    def render(self, chat: Chat) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in chat.messages) + chat.assistant_prefix

    async def count_tokens(self, chat: Chat) -> int:
        return len(self.render(chat)) // 4 + 1

    def check(self, request: GenerationRequest) -> None:
        request.sampling.validate()

    def submit(self, request: GenerationRequest) -> ScriptedJob:
        self.check(request)
        script = self.scripts[min(self.submitted, len(self.scripts) - 1)]
        self.submitted += 1
        job = ScriptedJob(request, script(request), self.token_delay, hold=self.hold)
        self.jobs.append(job)
        self.first_submitted.set()
        return job

    def stats(self) -> EngineStats:
        running = sum(1 for job in self.jobs if job.running)
        queued = sum(1 for job in self.jobs if job.waiting)
        return EngineStats(running, queued, parallel=len(self.jobs), cache_used=0, cache_size=0)

    async def aclose(self) -> None:
        return None
