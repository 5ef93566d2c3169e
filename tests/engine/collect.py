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
    async for event in (await engine.submit(request)).events():
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


#: How far (in nats) a job's log probabilities may drift between two runs of it: llama.cpp's
#: sums depend in the last bits on how the job's prompt was evaluated (see
#: test_llama_batching's docstring for the measurements).
DRIFT = 0.5


def matches_alone(alone: Output, other: Output, request: GenerationRequest) -> bool:
    """Check that ``other`` is the same job (``request``) as ``alone`` within llama.cpp's
    numeric drift (both run with ``top_logprobs >= 2``); True when they match to the end."""
    params = request.sampling
    pairs = list(zip(alone.token_ids, other.token_ids, strict=False))
    parted = next((k for k, (a, b) in enumerate(pairs) if a != b), None)
    for k in range(len(pairs) if parted is None else parted):
        assert abs(alone.logprobs[k].logprob - other.logprobs[k].logprob) <= DRIFT, k
    if parted is None:
        assert len(alone.token_ids) == len(other.token_ids)
        assert other.text == alone.text and other.finish.reason == alone.finish.reason
        return True
    # Identical logits would have given the same token (same seed, same draw).
    assert alone.logprobs[parted].top[0].logprob != other.logprobs[parted].top[0].logprob
    plain = params.greedy and not (
        request.constraint is not None
        or params.logit_bias
        or params.dry.enabled
        or params.repetition_penalty != 1.0
        or params.frequency_penalty
        or params.presence_penalty
    )
    if plain:
        best, second = alone.logprobs[parted].top[:2]
        assert best.logprob - second.logprob <= DRIFT, parted
    return False
