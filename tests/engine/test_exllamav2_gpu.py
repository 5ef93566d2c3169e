"""The GPU backend end to end on a real model directory (``EXLOOP_GPU_MODEL``): the engine
protocol, then the Responses and Chat Completions APIs in process through OpenAI's SDK.

Skipped, saying why, without CUDA, torch, exllamav2 or ``EXLOOP_GPU_MODEL``. The model may have
random weights (a Llama-shaped model saved as safetensors), so nothing here judges the answer's
quality: the checks are the protocol's (determinism, limits, stop sequences, constraints,
log probabilities, cancellation, batching and prefix reuse).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from exloop.engine.backends import gpu_problem
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

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]

_problem = gpu_problem()
if _problem is None and not os.environ.get("EXLOOP_GPU_MODEL"):
    _problem = "EXLOOP_GPU_MODEL does not name a model directory"
if _problem is not None:
    pytest.skip(f"GPU tests skipped: {_problem}", allow_module_level=True)

from exloop.engine.exllamav2_backend import ExLlamaV2Engine  # noqa: E402

from .collect import run_job  # noqa: E402
from .test_exllamav2_engine_cpu import sdk  # noqa: E402  (the API client, in process)

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
LONG_SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly." for i in range(120)
)


def chat(text: str, system: str = "You are a helpful assistant.") -> Chat:
    return Chat((ChatMessage("system", system), ChatMessage("user", text)))


@pytest.fixture(scope="module")
def engine() -> Iterator[ExLlamaV2Engine]:
    loaded = ExLlamaV2Engine.load(
        Path(os.environ["EXLOOP_GPU_MODEL"]), max_seq_len=4096, max_batch_size=8
    )
    yield loaded
    anyio.run(loaded.aclose)


async def test_greedy_output_is_repeatable(engine: ExLlamaV2Engine) -> None:
    request = GenerationRequest(chat("Count from one to five."), GREEDY)
    first, finish, deltas = await run_job(engine, request)
    second, _, _ = await run_job(engine, request)
    assert first == second
    assert finish.reason in ("eos", "length")
    assert finish.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert finish.usage.prompt_tokens == await engine.count_tokens(request.prompt)  # type: ignore[arg-type]


async def test_a_seed_makes_sampling_reproducible(engine: ExLlamaV2Engine) -> None:
    request = GenerationRequest(
        chat("Tell me a story."), SamplingParams(temperature=1.0, seed=11, max_tokens=24)
    )
    assert (await run_job(engine, request))[0] == (await run_job(engine, request))[0]


async def test_max_tokens_and_stop_sequences(engine: ExLlamaV2Engine) -> None:
    text, finish, _ = await run_job(
        engine,
        GenerationRequest(
            chat("Write a long essay."), SamplingParams(temperature=0.0, max_tokens=5)
        ),
    )
    assert finish.reason in ("length", "eos") and finish.usage.completion_tokens <= 5
    full, _, _ = await run_job(engine, GenerationRequest(chat("Write a long essay."), GREEDY))
    stop = full[3:6]
    if len(stop) < 3:
        pytest.skip("the model's greedy answer is too short to cut")
    text, finish, _ = await run_job(
        engine,
        GenerationRequest(
            chat("Write a long essay."),
            SamplingParams(temperature=0.0, max_tokens=24, stop=(stop,)),
        ),
    )
    assert finish.reason == "stop" and finish.stop_sequence == stop
    assert text == full[: full.index(stop)]


async def test_json_schema_constraint(engine: ExLlamaV2Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    request = GenerationRequest(
        chat("Give a person as JSON."),
        SamplingParams(temperature=0.8, seed=3, max_tokens=64),
        Grammar("json_schema", schema),
    )
    text, finish, _ = await run_job(engine, request)
    assert finish.reason == "eos", text
    value = json.loads(text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


async def test_logprobs_and_logit_bias(engine: ExLlamaV2Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=True, top_logprobs=3)
    _, _, deltas = await run_job(engine, GenerationRequest(chat("Say hi."), params))
    logprobs: list[TokenLogprob] = [lp for d in deltas for lp in d.logprobs]
    assert len(logprobs) == sum(len(d.token_ids) for d in deltas) > 0
    for entry in logprobs:
        assert entry.logprob <= 0.0 and len(entry.top) == 3
        # Greedy picks the most likely token.
        assert entry.top[0].token_id == entry.token_id
    banned = logprobs[0].token_id
    biased = SamplingParams(temperature=0.0, max_tokens=1, logit_bias={banned: -100.0})
    _, _, deltas = await run_job(engine, GenerationRequest(chat("Say hi."), biased))
    assert banned not in [t for d in deltas for t in d.token_ids]


async def test_cancel_frees_the_job(engine: ExLlamaV2Engine) -> None:
    job = await engine.submit(
        GenerationRequest(
            chat("Write a long essay."), SamplingParams(temperature=1.0, seed=1, max_tokens=2000)
        )
    )
    finish: Finish | None = None
    async for event in job.events():
        if isinstance(event, Delta):
            job.cancel()
        elif isinstance(event, Finish):
            finish = event
    assert finish is not None and finish.reason == "cancelled"
    assert finish.usage.completion_tokens < 2000
    text, _, _ = await run_job(engine, GenerationRequest(chat("Say hi."), GREEDY))
    assert isinstance(text, str)


async def test_concurrent_jobs_and_prefix_reuse(engine: ExLlamaV2Engine) -> None:
    prompts = [chat(f"Question {i}: what is {i} + {i}?", system=LONG_SYSTEM) for i in range(8)]
    results: list[Finish] = []

    async def one(prompt: Chat) -> None:
        results.append((await run_job(engine, GenerationRequest(prompt, GREEDY)))[1])

    async with anyio.create_task_group() as group:
        for prompt in prompts:
            group.start_soon(one, prompt)
    assert len(results) == 8 and all(f.reason in ("eos", "length") for f in results)
    # The long shared system prompt is in the cache now.
    _, again, _ = await run_job(engine, GenerationRequest(prompts[0], GREEDY))
    assert again.usage.cached_tokens >= 256


# -- the HTTP APIs, in process ---------------------------------------------------------------


async def test_responses_create_and_stream(engine: ExLlamaV2Engine) -> None:
    async with sdk(engine) as client:
        created = await client.responses.create(
            input="Say hi.", temperature=0, max_output_tokens=16
        )
        assert created.status in ("completed", "incomplete")
        assert created.usage is not None and created.usage.output_tokens > 0
        async with client.responses.stream(
            model="gpu", input="Say hi.", temperature=0, max_output_tokens=16
        ) as stream:
            async for _ in stream:
                pass
            streamed = await stream.get_final_response()
        assert streamed.output_text == created.output_text


async def test_responses_json_schema_and_follow_up(engine: ExLlamaV2Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    async with sdk(engine) as client:
        first = await client.responses.create(
            input=LONG_SYSTEM + " Name a city.",
            text={
                "format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}
            },
            max_output_tokens=40,
        )
        assert set(json.loads(first.output_text)) == {"city"}
        follow = await client.responses.create(
            input="And another one.",
            previous_response_id=first.id,
            max_output_tokens=8,
            temperature=0,
        )
        assert follow.usage is not None
        assert follow.usage.input_tokens_details.cached_tokens >= 256


async def test_chat_completions_create_and_stream(engine: ExLlamaV2Engine) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    async with sdk(engine) as client:
        created = await client.chat.completions.create(
            model="gpu", messages=messages, temperature=0, max_tokens=16
        )  # type: ignore[arg-type]
        text = created.choices[0].message.content or ""
        chunks = await client.chat.completions.create(
            model="gpu",
            messages=messages,
            temperature=0,
            max_tokens=16,
            stream=True,  # type: ignore[arg-type]
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        assert streamed == text
        assert created.choices[0].finish_reason in ("stop", "length")
