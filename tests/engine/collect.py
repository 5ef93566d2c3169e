"""Running one job to its end, for tests."""

from __future__ import annotations

from dataclasses import dataclass

from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
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


async def collect(engine: LlamaCppEngine, request: GenerationRequest) -> Output:
    text = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    async for event in engine.submit(request).events():
        if isinstance(event, Delta):
            text += event.text
            token_ids += event.token_ids
            logprobs += event.logprobs
        else:
            return Output(text, token_ids, logprobs, event)
    raise AssertionError("the job ended without a Finish event")


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
