"""Running one job to its end, for tests."""

from __future__ import annotations

from dataclasses import dataclass

from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
    Engine,
    Finish,
    GenerationRequest,
    Grammar,
    TokenLogprob,
)
from exloop.engine.sampling import SamplingParams


@dataclass(frozen=True)
class Output:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish: Finish


async def run_job(engine: Engine, request: GenerationRequest) -> tuple[str, Finish, list[Delta]]:
    """Run one job on any backend: its text, its Finish, and the deltas as they came."""
    deltas: list[Delta] = []
    async for event in engine.submit(request).events():
        if isinstance(event, Delta):
            deltas.append(event)
        elif isinstance(event, Finish):
            return "".join(d.text for d in deltas), event, deltas
    raise AssertionError("the job ended without a Finish event")


async def collect(engine: Engine, request: GenerationRequest) -> Output:
    text, finish, deltas = await run_job(engine, request)
    token_ids = tuple(t for d in deltas for t in d.token_ids)
    logprobs = tuple(lp for d in deltas for lp in d.logprobs)
    return Output(text, token_ids, logprobs, finish)


def user(content: str) -> Chat:
    return Chat((ChatMessage("user", content),))


async def generate(
    engine: LlamaCppEngine,
    content: str,
    constraint: Grammar | None = None,
    **sampling: object,
) -> Output:
    """One job for a single user message."""
    params = SamplingParams(**sampling)  # type: ignore[arg-type]
    return await collect(engine, GenerationRequest(user(content), params, constraint))
