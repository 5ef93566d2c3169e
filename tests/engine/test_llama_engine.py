"""The llama.cpp backend's jobs: constraints, cancellation, concurrency, KV reuse, limits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import cast

import anyio
import jsonschema
import pytest

from exloop.engine.errors import (
    ContextLengthExceeded,
    GenerationFailed,
    InvalidGrammar,
    InvalidParameter,
    ModelNotFound,
)
from exloop.engine.llama_cpp import MIN_SLOT, LlamaCppEngine, _slot_size
from exloop.engine.llama_model import LlamaModel
from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
    Finish,
    GenerationRequest,
    Grammar,
    Started,
    TokenPrompt,
)
from exloop.engine.sampling import SamplingParams

from .collect import collect, generate, user
from .conftest import TEST_CONTEXT

pytestmark = pytest.mark.anyio

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


async def test_json_schema_output_always_validates(engine: LlamaCppEngine) -> None:
    grammar = Grammar("json_schema", PERSON_SCHEMA)
    for seed in range(20):
        out = await generate(
            engine,
            "Describe a person as JSON.",
            grammar,
            temperature=1.0,
            seed=seed,
            max_tokens=60,
        )
        assert out.finish.reason == "eos", out.text
        jsonschema.validate(json.loads(out.text), PERSON_SCHEMA)
        # No free whitespace: a small model must not spin on spaces and newlines.
        assert out.text == json.dumps(
            json.loads(out.text), separators=(",", ":"), ensure_ascii=False
        )


async def test_regex_output_always_matches(engine: LlamaCppEngine) -> None:
    pattern = r"[a-z]{2,8}@[a-z]{2,8}\.(com|org)"
    for seed in range(5):
        out = await generate(
            engine,
            "Give me an email address.",
            Grammar("regex", pattern),
            temperature=1.0,
            seed=seed,
            max_tokens=30,
        )
        assert out.finish.reason == "eos"
        assert re.fullmatch(pattern, out.text), out.text


async def test_lark_output_always_matches(engine: LlamaCppEngine) -> None:
    lark = 'start: answer "." \nanswer: "yes" | "no" | "maybe " ("later" | "never")'
    for seed in range(5):
        out = await generate(
            engine,
            "Will it rain?",
            Grammar("lark", lark),
            temperature=1.0,
            seed=seed,
            max_tokens=10,
        )
        assert out.text in {"yes.", "no.", "maybe later.", "maybe never."}


async def test_llguidance_json_grammar_output_matches(engine: LlamaCppEngine) -> None:
    grammar = {"grammars": [{"lark_grammar": 'start: "colour: " c\nc: "red" | "green" | "blue"'}]}
    for seed in range(3):
        out = await generate(
            engine,
            "Pick a colour.",
            Grammar("llguidance", grammar),
            temperature=1.0,
            seed=seed,
            max_tokens=10,
        )
        assert out.text in {"colour: red", "colour: green", "colour: blue"}


async def test_constraint_with_greedy_and_logprobs(engine: LlamaCppEngine) -> None:
    out = await generate(
        engine,
        "Is the sky blue?",
        Grammar("regex", "(Yes|No), [a-z ]{1,20}"),
        temperature=0.0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=2,
    )
    assert re.fullmatch("(Yes|No), [a-z ]{1,20}", out.text)
    assert len(out.logprobs) == len(out.token_ids)


async def test_invalid_grammar_fails_before_generation(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(user("Hi"), constraint=Grammar("regex", "(unclosed"))
    with pytest.raises(InvalidGrammar) as checked:
        await engine.check(request)
    assert checked.value.param == "grammar"
    with pytest.raises(InvalidGrammar):
        await engine.submit(request)


async def test_cancel_takes_effect_within_one_token(engine: LlamaCppEngine) -> None:
    job = await engine.submit(
        GenerationRequest(user("Write a long essay about rivers."), SamplingParams(max_tokens=200))
    )
    received = 0
    finish: Finish | None = None
    async for event in job.events():
        if isinstance(event, Delta):
            received += len(event.token_ids)
            if received >= 3:
                job.cancel()
        elif isinstance(event, Finish):
            finish = event
    assert finish is not None and finish.reason == "cancelled"
    # Only tokens already under way when cancel() ran (in parallel on the worker) follow it.
    assert received <= finish.usage.completion_tokens <= received + 2 < 10


async def test_cancelling_the_consumer_cancels_the_job(engine: LlamaCppEngine) -> None:
    # The model cannot end its turn (its end tokens are banned) and may fill the context, so
    # the job is still generating when its consumer is cancelled, after the first token.
    never_ends = dict.fromkeys(engine._model.eog, -100.0)
    job = await engine.submit(
        GenerationRequest(
            user("Write a long essay about rivers."), SamplingParams(logit_bias=never_ends)
        )
    )
    with anyio.CancelScope() as scope:
        async for event in job.events():
            if isinstance(event, Delta):
                scope.cancel()  # as when the consuming task is cancelled mid-stream
    assert scope.cancelled_caught
    assert job.cancel_requested
    # The job leaves the batch at once: a short job completes, and nothing is left running.
    out = await generate(engine, "Hi", temperature=0.0, max_tokens=3)
    assert out.finish.reason in {"length", "eos"}
    assert engine.stats().running == 0


async def test_prefix_reuse_reports_cached_tokens(engine: LlamaCppEngine) -> None:
    first_chat = user("What is the capital of France?")
    first = await collect(
        engine, GenerationRequest(first_chat, SamplingParams(temperature=0.0, max_tokens=8))
    )
    follow_up = Chat(
        (
            *first_chat.messages,
            ChatMessage("assistant", first.text),
            ChatMessage("user", "And of Italy?"),
        )
    )
    second = await collect(
        engine, GenerationRequest(follow_up, SamplingParams(temperature=0.0, max_tokens=8))
    )
    assert second.finish.usage.prompt_tokens == await engine.count_tokens(follow_up)
    assert first.finish.usage.prompt_tokens - 2 <= second.finish.usage.cached_tokens
    assert second.finish.usage.cached_tokens < second.finish.usage.prompt_tokens
    # Another conversation shares only the system prompt's tokens with this one.
    other = await generate(engine, "Unrelated.", temperature=0.0, max_tokens=2)
    assert 0 < other.finish.usage.cached_tokens < first.finish.usage.prompt_tokens - 8


async def test_token_prompt_longer_than_the_context_fails_at_once(
    engine: LlamaCppEngine,
) -> None:
    with pytest.raises(ContextLengthExceeded):
        await engine.check(GenerationRequest(TokenPrompt((100,) * TEST_CONTEXT)))


async def test_chat_longer_than_the_context_fails_before_any_output(
    engine: LlamaCppEngine,
) -> None:
    job = await engine.submit(GenerationRequest(user("word " * TEST_CONTEXT)))
    events = []
    with pytest.raises(ContextLengthExceeded):
        async for event in job.events():
            events.append(event)
    assert events == []


async def test_no_max_tokens_runs_to_the_context_end(engine: LlamaCppEngine) -> None:
    prompt = TokenPrompt(
        tuple(engine._model.tokenize(b"one two three " * 200, add_bos=False))[: TEST_CONTEXT - 6]
    )
    eos_tokens = dict.fromkeys(engine._model.eog, -100.0)
    out = await collect(
        engine, GenerationRequest(prompt, SamplingParams(temperature=0.0, logit_bias=eos_tokens))
    )
    assert out.finish.reason == "length"
    assert out.finish.usage.completion_tokens == 6


async def test_token_prompt_ids_out_of_range_are_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidParameter) as checked:
        await engine.check(GenerationRequest(TokenPrompt((1, 10**9))))
    assert checked.value.param == "prompt"


def test_missing_model_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        LlamaCppEngine(tmp_path / "absent.gguf")
    assert str(tmp_path / "absent.gguf") in caught.value.message
    assert "--model PATH" in caught.value.message


async def test_aclose_cancels_running_work(model_path: Path) -> None:
    engine = await anyio.to_thread.run_sync(lambda: LlamaCppEngine(model_path, n_ctx=256))
    assert engine.info.backend == "llama.cpp" and engine.info.context_length == 256
    job = await engine.submit(
        GenerationRequest(user("Write a long essay."), SamplingParams(max_tokens=200))
    )
    events = job.events()
    assert isinstance(await events.__anext__(), Started)
    assert isinstance(await events.__anext__(), Delta)
    with anyio.fail_after(10):
        await engine.aclose()
    rest = [event async for event in events]
    assert isinstance(rest[-1], Finish) and rest[-1].reason == "cancelled"
    with pytest.raises(Exception, match="shut down"):
        await engine.submit(GenerationRequest(user("Hi")))


async def test_a_failed_decode_fails_its_jobs_and_the_engine_recovers(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_decode(ctx: object) -> int:
        return -3  # a fatal llama_decode status

    monkeypatch.setattr(engine._batcher._batch, "decode", broken_decode)
    job = await engine.submit(GenerationRequest(user("Hi"), SamplingParams(max_tokens=4)))
    with pytest.raises(GenerationFailed, match="llama_decode failed"):
        async for _event in job.events():
            pass
    monkeypatch.undo()
    out = await generate(engine, "Hi", temperature=0.0, max_tokens=4)
    assert out.finish.usage.completion_tokens > 0
    # The cache was emptied with the half-decoded batch: nothing is reused from before.
    assert out.finish.usage.cached_tokens == 0


async def test_a_failure_while_joining_the_batch_fails_that_job_only(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_open(prompt: object) -> None:
        raise RuntimeError("no sequence id is free")

    monkeypatch.setattr(engine._cache, "open", broken_open)
    job = await engine.submit(GenerationRequest(user("Hi"), SamplingParams(max_tokens=4)))
    with pytest.raises(GenerationFailed, match="no sequence id is free"):
        async for _event in job.events():
            pass
    monkeypatch.undo()
    out = await generate(engine, "Hi", temperature=0.0, max_tokens=4)
    assert out.finish.usage.completion_tokens > 0


class _MiBPerToken:
    """A model whose KV cache takes 1 MiB per token: 2 GiB hold 2048 tokens."""

    def kv_bytes_per_token(self) -> int:
        return 1 << 20


def test_a_window_given_with_n_ctx_is_kept_whole() -> None:
    model = cast(LlamaModel, _MiBPerToken())
    # The default window shrinks to fit 2 GiB of cache; an asked one does not.
    assert _slot_size(8192, 4, None, model, asked=False) == 512
    assert _slot_size(8192, 16, None, model, asked=False) == MIN_SLOT
    assert _slot_size(16384, 8, None, model, asked=True) == 16384
    # --cache-tokens still divides between the slots, within the window.
    assert _slot_size(16384, 8, 32768, model, asked=True) == 4096
    assert _slot_size(1024, 8, 32768, model, asked=True) == 1024
