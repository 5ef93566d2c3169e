"""``ExLlamaV2Engine`` through ExLlamaV2's real dynamic generator, on the CPU.

Only the model is scripted: a stand-in with ``forward_chunk`` whose logits favour a fixed
answer (each token of it follows the one before; after the last comes the stop token), next
to SmolLM2's real tokenizer. Everything else is ExLlamaV2 0.3.2's own code: job queueing,
page allocation and prefix deduplication, batching in paged mode, sampling with our
``Settings``, the filter protocol, stop tokens and held text. Paged mode is switched on by
telling ExLlamaV2 that flash-attn is there (the stand-in model needs no attention kernels).

Needs torch and exllamav2; skipped in CI. Runs the same on a GPU machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from exloop.engine.errors import GenerationFailed
from exloop.engine.exllamav2_vocab import ModelVocabulary, read_vocabulary
from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
    Finish,
    GenerationRequest,
    Grammar,
    Started,
)
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator.service import Orchestrator
from exloop.server.app import AppSettings, build_app

from . import test_exllamav2_classes as _classes  # installs the CPU extension where needed
from .collect import run_job

smollm_dir = _classes.smollm_dir
backend = _classes.backend
torch = _classes.torch

from exllamav2 import attn as exl_attn  # noqa: E402
from exllamav2.config import ExLlamaV2Config  # noqa: E402
from exllamav2.tokenizer.tokenizer import ExLlamaV2Tokenizer  # noqa: E402

pytestmark = pytest.mark.anyio

ANSWER = "Hello there! How are you?"
STOP = 2  # <|im_end|>
CACHE_TOKENS = 4096


class ScriptedModel:
    """``forward_chunk`` as the generator calls it; logits favour the next answer token
    (10), then the stop token (5), then everything else (0)."""

    def __init__(self, answer: list[int], vocab_size: int) -> None:
        self.config = ExLlamaV2Config()
        self.config.vocab_size = vocab_size
        self.config.max_seq_len = 2048
        self.config.arch = type("Arch", (), {"lm": type("LM", (), {"mrope": False})()})()
        self.padded = -(-vocab_size // 32) * 32
        self.following = dict(zip(answer, answer[1:] + [STOP], strict=True))
        self.first = answer[0]
        self.batch_sizes: list[int] = []
        self.fail_next = False
        self.unloaded = False

    def forward_chunk(
        self, input_ids: Any, preprocess_only: bool = False, **_: Any
    ) -> dict[str, Any]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA error: device-side assert triggered")
        if preprocess_only:
            return {}
        self.batch_sizes.append(input_ids.shape[0])
        logits = torch.zeros((input_ids.shape[0], input_ids.shape[1], self.padded))
        logits[:, :, STOP] = 5.0
        for row in range(input_ids.shape[0]):
            logits[row, -1, self.following.get(int(input_ids[row, -1]), self.first)] = 10.0
        return {"logits": logits}

    def unload(self) -> None:
        self.unloaded = True


class HostCache:
    """The cache object's bookkeeping side (the scripted model keeps no keys or values)."""

    batch_size = 1

    def __init__(self, tokens: int) -> None:
        self.max_seq_len = tokens
        self.current_seq_len = 0

    def all_tensors(self) -> list[Any]:
        return []

    def copy_states(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def vocab(smollm_dir: Path) -> ModelVocabulary:
    return read_vocabulary(smollm_dir)


def _engine(vocab: ModelVocabulary, smollm_dir: Path, *, paged: bool) -> Any:
    config = ExLlamaV2Config()
    config.model_dir = str(smollm_dir)
    config.vocab_size, config.bos_token_id, config.eos_token_id = vocab.vocab_size, 1, STOP
    config.pad_token_id = None
    tokenizer = ExLlamaV2Tokenizer(config)
    answer = tokenizer.encode(ANSWER)[0].tolist()
    assert len(set(answer)) == len(answer)
    model = ScriptedModel(answer, vocab.vocab_size)
    loaded = backend.LoadedModel(
        path=smollm_dir,
        vocab=vocab,
        model=model,
        cache=HostCache(CACHE_TOKENS),
        tokenizer=tokenizer,
        max_seq_len=2048,
        cache_tokens=CACHE_TOKENS,
        paged=paged,
        max_batch_size=4 if paged else 1,
    )
    return backend.ExLlamaV2Engine(loaded, name="scripted")


@pytest.fixture(scope="module", params=["paged", "unpaged"])
def engine(
    request: pytest.FixtureRequest, vocab: ModelVocabulary, smollm_dir: Path
) -> Iterator[Any]:
    paged = request.param == "paged"
    with pytest.MonkeyPatch.context() as patch:
        # Paged mode asks for flash-attn; the scripted model needs none.
        patch.setattr(exl_attn, "has_flash_attn_with_paged", paged)
        loaded = _engine(vocab, smollm_dir, paged=paged)
        yield loaded
        anyio.run(loaded.aclose)
    assert loaded._model.unloaded


def chat(text: str, system: str = "Be brief.") -> Chat:
    return Chat((ChatMessage("system", system), ChatMessage("user", text)))


GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


async def test_the_answer_streams_and_ends_on_the_stop_token(engine: Any) -> None:
    request = GenerationRequest(chat("Hi!"), GREEDY)
    text, finish, deltas = await run_job(engine, request)
    assert text == ANSWER
    assert finish.reason == "eos" and finish.stop_sequence is None
    assert finish.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert finish.usage.prompt_tokens == await engine.count_tokens(request.prompt)
    assert STOP not in [t for d in deltas for t in d.token_ids]


async def test_sampling_with_a_seed_repeats(engine: Any) -> None:
    request = GenerationRequest(chat("Hi!"), SamplingParams(temperature=1.5, seed=4, max_tokens=12))
    first, _, _ = await run_job(engine, request)
    assert (await run_job(engine, request))[0] == first


async def test_max_tokens_and_a_stop_sequence(engine: Any) -> None:
    text, finish, _ = await run_job(
        engine, GenerationRequest(chat("Hi!"), SamplingParams(temperature=0.0, max_tokens=3))
    )
    assert finish.reason == "length" and finish.usage.completion_tokens == 3
    assert ANSWER.startswith(text)
    text, finish, _ = await run_job(
        engine,
        GenerationRequest(
            chat("Hi!"), SamplingParams(temperature=0.0, max_tokens=32, stop=("! How",))
        ),
    )
    assert (text, finish.reason, finish.stop_sequence) == ("Hello there", "stop", "! How")
    generator = engine._driver._generator
    assert not generator.active_jobs and not generator.pending_jobs  # cancelled, pages freed


async def test_logprobs_are_the_models_own(engine: Any, vocab: ModelVocabulary) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=3, logprobs=True, top_logprobs=2)
    _, _, deltas = await run_job(engine, GenerationRequest(chat("Hi!"), params))
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert [lp.token_id for lp in logprobs] == [t for d in deltas for t in d.token_ids]
    rest = vocab.vocab_size - 2
    normalizer = math.log(math.exp(10) + math.exp(5) + rest)
    for entry in logprobs:
        assert entry.logprob == pytest.approx(10 - normalizer, abs=1e-4)
        assert [t.token_id for t in entry.top] == [entry.token_id, STOP]
        assert entry.top[1].logprob == pytest.approx(5 - normalizer, abs=1e-4)


async def test_logit_bias_and_output_penalties_change_the_choice(
    engine: Any, vocab: ModelVocabulary
) -> None:
    text, _, deltas = await run_job(engine, GenerationRequest(chat("Hi!"), GREEDY))
    first = deltas[0].token_ids[0]
    _, _, biased = await run_job(
        engine,
        GenerationRequest(
            chat("Hi!"), SamplingParams(temperature=0.0, max_tokens=1, logit_bias={first: -100.0})
        ),
    )
    # The favoured token is out; the stop token (next best) ends the answer at once.
    assert first not in [t for d in biased for t in d.token_ids]
    # Presence 2.0 only touches tokens already in the output: the first token is unaffected.
    penalized, _, _ = await run_job(
        engine,
        GenerationRequest(
            chat("Hi!"), SamplingParams(temperature=0.0, max_tokens=32, presence_penalty=2.0)
        ),
    )
    assert penalized == text


async def test_a_json_schema_constraint_is_followed(engine: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"enum": ["yes", "no"]}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    text, finish, _ = await run_job(
        engine,
        GenerationRequest(
            chat("Hi!"),
            SamplingParams(temperature=0.0, max_tokens=32),
            Grammar("json_schema", schema),
        ),
    )
    assert json.loads(text) in ({"ok": "no"}, {"ok": "yes"})
    assert finish.reason == "eos"


async def test_cancel_ends_the_job_in_the_generator(engine: Any) -> None:
    # The stop token banned and room for 512 tokens: the job can end only by the cancel (it
    # once stopped by itself after 7 tokens, before the cancel sent on its first one landed).
    params = SamplingParams(temperature=0.0, max_tokens=512, logit_bias={STOP: -100.0})
    job = await engine.submit(GenerationRequest(chat("Hi!"), params))
    finish: Finish | None = None
    async for event in job.events():
        if isinstance(event, Delta):
            job.cancel()
        elif isinstance(event, Finish):
            finish = event
    assert finish is not None and finish.reason == "cancelled"
    generator = engine._driver._generator
    assert not generator.active_jobs and not generator.pending_jobs


async def test_concurrent_jobs_share_the_batch_and_the_prompt_pages(engine: Any) -> None:
    system = "You answer briefly. " + " ".join(f"Rule {i}: be kind." for i in range(100))
    model = engine._model
    model.batch_sizes.clear()
    results: list[tuple[str, Finish]] = []

    async def one(i: int) -> None:
        text, finish, _ = await run_job(
            engine, GenerationRequest(chat(f"Question {i}", system), GREEDY)
        )
        results.append((text, finish))

    async with anyio.create_task_group() as group:
        for i in range(6):
            group.start_soon(one, i)
    assert [text for text, _ in results] == [ANSWER] * 6
    _, again, _ = await run_job(engine, GenerationRequest(chat("Question 0", system), GREEDY))
    assert again.usage.cached_tokens >= 256
    if engine.paged:
        assert max(model.batch_sizes) > 1  # jobs were decoded together
    else:
        assert max(model.batch_sizes) == 1


async def test_jobs_start_with_started_and_load_shows_the_batch(engine: Any) -> None:
    job = await engine.submit(GenerationRequest(chat("Hi!"), GREEDY))
    events = [event async for event in job.events()]
    assert isinstance(events[0], Started) and isinstance(events[-1], Finish)
    assert sum(isinstance(e, Started) for e in events) == 1
    stats = engine.stats()
    assert (stats.running, stats.queued) == (0, 0)
    assert stats.parallel == (4 if engine.paged else 1)
    assert stats.cache_size == CACHE_TOKENS and 0 <= stats.cache_used <= CACHE_TOKENS


# -- the HTTP APIs, in process, over this engine ----------------------------------------------


@asynccontextmanager
async def sdk(engine: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    """OpenAI's SDK talking to the app over ``engine``, in process."""
    async with Orchestrator(engine, model_name="exllamav2") as orchestrator:
        app = build_app(orchestrator, AppSettings("exllamav2"))
        await app.start()
        try:
            transport = httpx.ASGITransport(app)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://exloop/v1") as http:
                yield openai.AsyncOpenAI(
                    base_url="http://exloop/v1", api_key="k", http_client=http, max_retries=0
                )
        finally:
            await app.stop()


async def test_responses_api(engine: Any) -> None:
    async with sdk(engine) as client:
        created = await client.responses.create(input="Hi!", temperature=0, max_output_tokens=32)
        assert created.status == "completed" and created.output_text == ANSWER
        async with client.responses.stream(
            model="x", input="Hi!", temperature=0, max_output_tokens=32
        ) as stream:
            async for _ in stream:
                pass
            streamed = await stream.get_final_response()
        assert streamed.output_text == ANSWER
        short = await client.responses.create(input="Hi!", temperature=0, max_output_tokens=2)
        assert short.status == "incomplete"


async def test_responses_follow_up_reuses_the_cache(engine: Any) -> None:
    long_input = "Remember these rules. " + " ".join(f"Rule {i}: be kind." for i in range(100))
    async with sdk(engine) as client:
        first = await client.responses.create(input=long_input, temperature=0, max_output_tokens=32)
        follow = await client.responses.create(
            input="And now?", previous_response_id=first.id, temperature=0, max_output_tokens=32
        )
        assert follow.output_text == ANSWER
        assert follow.usage is not None
        assert follow.usage.input_tokens_details.cached_tokens >= 256


async def test_responses_json_schema(engine: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    async with sdk(engine) as client:
        created = await client.responses.create(
            input="Hi!",
            max_output_tokens=32,
            text={
                "format": {"type": "json_schema", "name": "ok", "schema": schema, "strict": True}
            },
        )
        assert set(json.loads(created.output_text)) == {"ok"}


async def test_chat_completions_api(engine: Any) -> None:
    messages: Any = [{"role": "user", "content": "Hi!"}]
    async with sdk(engine) as client:
        created = await client.chat.completions.create(
            model="x",
            messages=messages,
            temperature=0,
            max_tokens=32,
            logprobs=True,
            top_logprobs=2,
        )
        choice = created.choices[0]
        assert choice.message.content == ANSWER and choice.finish_reason == "stop"
        assert choice.logprobs is not None and choice.logprobs.content
        chunks = await client.chat.completions.create(
            model="x", messages=messages, temperature=0, max_tokens=32, stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        assert streamed == ANSWER


async def test_a_forward_pass_failure_fails_its_jobs_and_the_engine_recovers(engine: Any) -> None:
    old = engine._driver._generator
    engine._model.fail_next = True
    with pytest.raises(GenerationFailed, match="device-side assert"):
        await run_job(engine, GenerationRequest(chat("Hi!"), GREEDY))
    text, _, _ = await run_job(engine, GenerationRequest(chat("Hi!"), GREEDY))
    assert text == ANSWER
    assert engine._driver._generator is not old
