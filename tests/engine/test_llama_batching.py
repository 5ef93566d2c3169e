"""Continuous batching on the CPU backend: jobs decoded together behave as they do alone,
cancelled jobs free their cells at once, jobs that do not fit wait their turn in order.

**Tolerance.** A job's tokens are compared with what it produces alone, by token id. llama.cpp
computes each row of a batch on its own, so a job's logits do not depend on the other jobs of
its batch, but they do depend, in the last bits, on how its prompt was evaluated (in one
piece, in chunks beside other jobs' tokens, or partly copied from a cached prefix: the same
terms summed in other groupings) and, with flash attention, on 16-bit rounding of those sums.
Over tens of tokens the difference can grow to a few tenths of a nat (measured: at most 0.12
over 40 tokens, and one greedy choice flipped where the best two tokens were 0.40 nats apart);
llama-server behaves the same. So:

* every token before a job's first divergence matches, with log probabilities within
  ``DRIFT`` (0.5) nats of the job alone;
* where the two runs part, the model's distribution did change (a sampler that ignored its
  seed, or a job given another's logits, would part with identical numbers);
* a plain greedy job (no penalty, bias or constraint) parts only where its two best tokens
  were within ``DRIFT`` nats.

:func:`.collect.matches_alone` checks these; a mix-up of sequences or samplers breaks them at
once, by whole nats.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import anyio
import llama_cpp
import pytest

import exloop.engine.llama_cpp as llama_backend
from exloop.engine.handoff import ThreadedJob
from exloop.engine.llama_batcher import GATHER_AFTER, GATHER_WAIT
from exloop.engine.llama_cpp import CHUNK_TOKENS, LlamaCppEngine
from exloop.engine.llama_sampler import make_sampler
from exloop.engine.llama_sequence import ReadyJob
from exloop.engine.protocol import (
    Chat,
    ChatMessage,
    Delta,
    Finish,
    GenerationRequest,
    Grammar,
    JobEvent,
    Started,
)
from exloop.engine.sampling import DrySettings, SamplingParams

from .collect import Output, collect, matches_alone, user

pytestmark = pytest.mark.anyio

PROMPTS = (
    "Write a story about a cat.",
    "Name three colours.",
    "Count to ten.",
    "Explain why it rains.",
    "Describe a city at night.",
    "What is Python?",
)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def mixed_requests(engine: LlamaCppEngine) -> list[GenerationRequest]:
    """Every sampling field and both kinds of constraint, on different prompts."""
    banana = engine._model.tokenize(b" banana", add_bos=False)[0]
    settings: list[tuple[SamplingParams, Grammar | None]] = [
        (SamplingParams(temperature=0.0), None),
        (SamplingParams(temperature=0.9, seed=11), None),
        (SamplingParams(temperature=0.0, repetition_penalty=1.3), None),
        (SamplingParams(temperature=0.7, seed=3, top_k=20, top_p=0.9, min_p=0.05), None),
        (SamplingParams(temperature=0.0, dry=DrySettings(multiplier=1.5)), None),
        (SamplingParams(temperature=0.0, frequency_penalty=0.8, presence_penalty=0.3), None),
        (SamplingParams(temperature=0.0, logit_bias={banana: 8.0}), None),
        (SamplingParams(temperature=0.0, stop=(".", "\n")), None),
        (SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3), None),
        (SamplingParams(temperature=1.0, seed=5), Grammar("json_schema", SCHEMA)),
        (SamplingParams(temperature=0.0), Grammar("regex", "(yes|no), [a-z ]{3,30}")),
        (SamplingParams(temperature=0.8, seed=8, max_tokens=9), None),
    ]
    return [
        GenerationRequest(
            user(PROMPTS[i % len(PROMPTS)]),
            params if params.max_tokens else _with_max(params, 40),
            constraint,
        )
        for i, (params, constraint) in enumerate(settings)
    ]


def _with_max(params: SamplingParams, max_tokens: int) -> SamplingParams:
    return replace(params, max_tokens=max_tokens)


async def run_all(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> list[Output]:
    """Submit every request at once and collect each job."""
    outputs: dict[int, Output] = {}

    async def one(index: int) -> None:
        outputs[index] = await collect(engine, requests[index])

    async with anyio.create_task_group() as group:
        for index in range(len(requests)):
            group.start_soon(one, index)
    return [outputs[i] for i in range(len(requests))]


async def test_jobs_in_one_batch_produce_what_they_produce_alone(engine: LlamaCppEngine) -> None:
    # Log probabilities (computed before any penalty or mask) do not change what is sampled.
    requests = [
        replace(
            r,
            sampling=replace(
                r.sampling, logprobs=True, top_logprobs=max(2, r.sampling.top_logprobs)
            ),
        )
        for r in mixed_requests(engine)
    ]
    alone = [await collect(engine, request) for request in requests]
    together = await run_all(engine, requests)
    exact = [
        matches_alone(single, batched, request)
        for request, single, batched in zip(requests, alone, together, strict=True)
    ]
    assert sum(exact) >= len(exact) * 3 // 4, exact
    # Twelve jobs, eight places: all of them ran, and the engine is idle again.
    stats = engine.stats()
    assert (stats.running, stats.queued, stats.parallel) == (0, 0, 8)


async def test_a_job_reusing_a_running_jobs_prefix_reports_cached_tokens(
    engine: LlamaCppEngine,
) -> None:
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: be kind." for i in range(30))
    chats = [
        Chat((ChatMessage("system", system), ChatMessage("user", question)))
        for question in ("Name a fruit.", "Name a tree.")
    ]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    first, second = await run_all(engine, [GenerationRequest(chat, params) for chat in chats])
    prompt = await engine.count_tokens(chats[1])
    # The system prompt (about 200 tokens) was evaluated once.
    assert max(first.finish.usage.cached_tokens, second.finish.usage.cached_tokens) >= 150
    assert second.finish.usage.prompt_tokens == prompt


def sequence_cells(engine: LlamaCppEngine, seq_id: int) -> int:
    """How many positions llama.cpp's KV cache holds for ``seq_id`` (0 when none)."""
    assert engine._ctx is not None
    memory = llama_cpp.llama_get_memory(engine._ctx)
    return int(llama_cpp.llama_memory_seq_pos_max(memory, seq_id)) + 1


async def test_cancel_and_disconnect_mid_batch_free_the_cells_at_once(
    engine: LlamaCppEngine,
) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=120)
    jobs = [await engine.submit(GenerationRequest(user(p), long)) for p in PROMPTS[:3]]
    streams = [job.events() for job in jobs]
    for stream in streams:
        while not isinstance(await anext(stream), Delta):
            pass
    seq_ids = [_seq_id_of(engine, job) for job in jobs]
    assert all(sequence_cells(engine, seq_id) > 0 for seq_id in seq_ids)
    jobs[0].cancel()  # what POST /cancel does
    # The consumer went away (a client disconnected): its generator is closed.
    await cast(AsyncGenerator[JobEvent, None], streams[1]).aclose()
    assert jobs[1].cancel_requested
    # The third job's next tokens come from steps that began by ending the other two.
    tokens = 0
    while tokens < 3:
        event = await anext(streams[2])
        assert isinstance(event, Delta)
        tokens += len(event.token_ids)
    assert engine.stats().running == 1
    assert [sequence_cells(engine, seq_id) for seq_id in seq_ids[:2]] == [0, 0]
    ended = [event async for event in streams[0]]
    assert isinstance(ended[-1], Finish) and ended[-1].reason == "cancelled"
    jobs[2].cancel()
    ended = [event async for event in streams[2]]
    assert isinstance(ended[-1], Finish) and ended[-1].reason == "cancelled"
    # Nothing runs now, and the cancelled jobs' slots are empty (finished jobs' stay cached).
    assert sequence_cells(engine, seq_ids[2]) == 0
    assert engine.stats().running == 0


def _seq_id_of(engine: LlamaCppEngine, job: object) -> int:
    for seq in list(engine._batcher._running):
        if seq.job is job:
            return seq.cells.seq_id
    raise AssertionError("the job is not running")


def record_steps(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """From now on, each step's batch as the sequence id of every token, in batch order."""
    batch = engine._batcher._batch
    steps: list[list[int]] = []
    decode = batch.decode

    def recording(ctx: object) -> int:
        steps.append(batch._seq_ids[: batch.size].tolist())
        return decode(ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "decode", recording)
    return steps


@pytest.fixture(scope="module")
def two_slots(model_path: Path) -> Iterator[LlamaCppEngine]:
    """Two places, of 256 tokens each (llama.cpp's smallest slot)."""
    loaded = LlamaCppEngine(model_path, n_ctx=256, parallel=2)
    yield loaded
    anyio.run(loaded.aclose)


async def test_jobs_beyond_the_free_places_wait_then_run_in_arrival_order(
    two_slots: LlamaCppEngine,
) -> None:
    engine = two_slots
    stats = engine.stats()
    assert (stats.parallel, stats.cache_size, engine.info.context_length) == (2, 512, 256)
    ban = dict.fromkeys(engine._model.eog, -100.0)
    long = SamplingParams(temperature=0.0, max_tokens=40, logit_bias=ban)
    short = SamplingParams(temperature=0.0, max_tokens=4, logit_bias=ban)
    names = ("first", "second", "third", "fourth")
    jobs = {
        "first": await engine.submit(GenerationRequest(user("Write a story about a cat."), long)),
        "second": await engine.submit(GenerationRequest(user("Write a story about a dog."), short)),
        "third": await engine.submit(GenerationRequest(user("Write a story about a fox."), long)),
        "fourth": await engine.submit(GenerationRequest(user("Say hi."), short)),
    }
    log: list[tuple[str, type[JobEvent]]] = []
    queued_while_first_ran: list[int] = []

    async def follow(name: str) -> None:
        async for event in jobs[name].events():
            if name == "first" and isinstance(event, Delta) and not queued_while_first_ran:
                queued_while_first_ran.append(engine.stats().queued)
            if not isinstance(event, Delta):
                log.append((name, type(event)))

    async with anyio.create_task_group() as group:
        for name in names:
            group.start_soon(follow, name)
    # Two run at once; the third starts when the second (4 tokens) leaves its place, and the
    # fourth, though it would be quick, only after the third started.
    assert log.index(("third", Started)) > log.index(("second", Finish))
    assert log.index(("fourth", Started)) > log.index(("third", Started))
    assert log.index(("third", Started)) < log.index(("first", Finish))
    assert queued_while_first_ran[0] >= 1
    assert all((name, Finish) in log for name in names)


async def start_talking(engine: LlamaCppEngine) -> tuple[ThreadedJob, AsyncIterator[JobEvent]]:
    """A job that keeps generating (its end of turn banned), once it has produced a token."""
    ban = dict.fromkeys(engine._model.eog, -100.0)
    params = SamplingParams(temperature=0.0, max_tokens=400, logit_bias=ban)
    talker = await engine.submit(GenerationRequest(user("Count to fifty."), params))
    talking = talker.events()
    while not isinstance(await anext(talking), Delta):
        pass
    return talker, talking


@pytest.fixture(scope="module")
def wide_engine(model_path: Path) -> Iterator[LlamaCppEngine]:
    """Room for a prompt of several 512-token chunks beside a generating job."""
    loaded = LlamaCppEngine(model_path, n_ctx=1536, parallel=2, cache_tokens=3072)
    yield loaded
    anyio.run(loaded.aclose)


async def test_a_long_prompt_is_read_in_chunks_between_the_others_tokens(
    wide_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = wide_engine
    recorded = record_steps(engine, monkeypatch)
    talker, talking = await start_talking(engine)
    talker_seq = _seq_id_of(engine, talker)
    document = " ".join(f"Line {i} of the report." for i in range(150))
    reader = await collect(
        engine, GenerationRequest(user(document), SamplingParams(temperature=0.0, max_tokens=2))
    )
    talker.cancel()
    rest = [event async for event in talking]
    assert isinstance(rest[-1], Finish) and rest[-1].reason == "cancelled"
    assert reader.finish.usage.prompt_tokens > 2 * CHUNK_TOKENS
    steps = [Counter(ids) for ids in recorded]
    assert max(sum(step.values()) for step in steps) <= CHUNK_TOKENS
    # The prompt took several steps, and the talking job got its token in each of them.
    reading = [step for step in steps if any(n > 1 for seq, n in step.items() if seq != talker_seq)]
    assert len(reading) >= 3
    assert all(step[talker_seq] == 1 for step in reading)


@pytest.fixture(scope="module")
def six_slots(model_path: Path) -> Iterator[LlamaCppEngine]:
    """Six places: room for running jobs to sit apart."""
    loaded = LlamaCppEngine(model_path, n_ctx=512, parallel=6)
    yield loaded
    anyio.run(loaded.aclose)


async def test_each_step_holds_its_jobs_in_one_run_of_sequence_ids(
    six_slots: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama.cpp evaluates a step in one pass over the weights per run of consecutive sequence
    # ids in batch order: the jobs must sit in neighbouring slots and the batch be sorted.
    engine = six_slots
    # Four conversations that ran together, in slots 0 to 3.
    ban = dict.fromkeys(engine._model.eog, -100.0)
    params = SamplingParams(temperature=0.0, max_tokens=6, logit_bias=ban)
    chats = [user(prompt) for prompt in PROMPTS[:4]]
    first = await run_all(engine, [GenerationRequest(chat, params) for chat in chats])
    steps = record_steps(engine, monkeypatch)
    # The next turns of the fourth and the second, then a newcomer: where each would find
    # the most of its prompt (slots 3, 1 and the least recently used) are apart.
    requests = [
        GenerationRequest(
            Chat(
                (
                    *chats[i].messages,
                    ChatMessage("assistant", first[i].text),
                    user("More.").messages[0],
                )
            ),
            replace(params, max_tokens=16),
        )
        for i in (3, 1)
    ]
    requests.append(GenerationRequest(user(PROMPTS[5]), replace(params, max_tokens=16)))
    outputs = await run_all(engine, requests)
    assert [output.finish.usage.completion_tokens for output in outputs] == [16, 16, 16]
    assert any(len(set(ids)) == 3 for ids in steps)
    for ids in steps:
        assert ids == sorted(ids)
        if len(set(ids)) == 3:  # all three running (they start and end a step or two apart)
            assert ids[-1] - ids[0] == 2, ids


async def test_a_gap_left_by_a_job_that_ended_is_closed_only_if_it_lasts(
    six_slots: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = six_slots
    ban = dict.fromkeys(engine._model.eog, -100.0)
    params = SamplingParams(temperature=0.0, max_tokens=GATHER_AFTER + 30, logit_bias=ban)
    jobs = [await engine.submit(GenerationRequest(user(p), params)) for p in PROMPTS[:3]]
    streams = [job.events() for job in jobs]
    for stream in streams:
        while not isinstance(await anext(stream), Delta):
            pass
    slots = sorted((_seq_id_of(engine, job), i) for i, job in enumerate(jobs))
    assert slots[2][0] - slots[0][0] == 2  # gathered when they were admitted
    steps = record_steps(engine, monkeypatch)
    jobs[slots[1][1]].cancel()  # the job in the middle slot
    for i in (slots[0][1], slots[2][1]):
        ended = [event async for event in streams[i]]
        assert isinstance(ended[-1], Finish) and ended[-1].reason == "length"
    await cast(AsyncGenerator[JobEvent, None], streams[slots[1][1]]).aclose()
    pairs = [distinct for ids in steps if len(distinct := sorted(set(ids))) == 2]
    split = [i for i, ids in enumerate(pairs) if ids[1] - ids[0] > 1]
    together = [i for i, ids in enumerate(pairs) if ids[1] - ids[0] == 1]
    # Split for GATHER_AFTER steps (or one more, as the cancel lands between steps), then
    # moved together for the rest.
    assert GATHER_AFTER <= len(split) <= GATHER_AFTER + 1
    assert together and max(split) < min(together)


async def test_preparing_a_job_never_stalls_the_batch_and_a_cancelled_one_builds_nothing(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    samplers: list[object] = []
    prepare = engine._batcher._prepare
    build_sampler = make_sampler

    def slow_prepare(job: ThreadedJob) -> ReadyJob | None:
        if job.request.prompt == user("Wait for me."):
            release.wait()  # a costly tokenizer or sampler build, on the preparing thread
        return prepare(job)

    def counting_sampler(*args: object) -> object:
        samplers.append(args)
        return build_sampler(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(engine._batcher, "_prepare", slow_prepare)
    monkeypatch.setattr(llama_backend, "make_sampler", counting_sampler)
    talker, talking = await start_talking(engine)
    waiter = await engine.submit(
        GenerationRequest(user("Wait for me."), SamplingParams(max_tokens=4))
    )
    # While the waiter is being prepared, the batch keeps decoding.
    tokens = 0
    while tokens < 5:
        event = await anext(talking)
        if isinstance(event, Delta):
            tokens += len(event.token_ids)
    assert engine.stats().queued == 1
    waiter.cancel()
    release.set()
    ended = [event async for event in waiter.events()]
    assert len(ended) == 1 and isinstance(ended[0], Finish) and ended[0].reason == "cancelled"
    assert len(samplers) == 1  # the talker's; the cancelled waiter built none
    talker.cancel()
    assert [type(event) async for event in talking][-1] is Finish


async def test_a_burst_reaching_an_idle_engine_starts_in_one_step(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four jobs submitted together become ready one by one (the first only once all are
    submitted, the others a few milliseconds apart, as a busy tokenizer would make them);
    the first step still reads all four prompts, rather than the first job's alone."""
    steps = record_steps(engine, monkeypatch)
    prepare = engine._batcher._prepare
    submitted = threading.Event()
    stagger = GATHER_WAIT / 8

    def staggered_prepare(job: ThreadedJob) -> ReadyJob | None:
        if job.request.prompt == user("Burst 0."):
            submitted.wait(5)
        else:
            time.sleep(stagger)
        return prepare(job)

    monkeypatch.setattr(engine._batcher, "_prepare", staggered_prepare)
    params = SamplingParams(temperature=0.0, max_tokens=3)
    jobs = [await engine.submit(GenerationRequest(user(f"Burst {i}."), params)) for i in range(4)]
    submitted.set()
    for job in jobs:
        assert [type(event) async for event in job.events()][-1] is Finish
    assert len(set(steps[0])) == 4, [sorted(Counter(s).items()) for s in steps[:4]]


async def test_the_first_step_waits_for_requests_still_on_their_way(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four requests reach an idle engine together, but the server checks them one after the
    other (here: 0, 1, 2 and 3 times a sixth of GATHER_WAIT), so the first job is ready
    while the others are still on their way: the first step still reads all four prompts."""
    steps = record_steps(engine, monkeypatch)
    params = SamplingParams(temperature=0.0, max_tokens=3)
    ends: list[JobEvent] = []

    async def request(i: int) -> None:
        with engine.arriving():
            await anyio.sleep(i * GATHER_WAIT / 6)  # being checked and tokenized
        job = await engine.submit(GenerationRequest(user(f"Arrival {i}."), params))
        ends.append([event async for event in job.events()][-1])

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(request, i)
    assert all(isinstance(end, Finish) for end in ends)
    assert len(set(steps[0])) == 4, [sorted(Counter(s).items()) for s in steps[:4]]


async def test_a_request_that_never_comes_holds_the_first_step_back_only_a_moment(
    engine: LlamaCppEngine,
) -> None:
    """A request on its way that is then refused (or checked for long) never reaches the
    engine: a job submitted meanwhile still runs to its end, while that one is still
    arriving."""
    params = SamplingParams(temperature=0.0, max_tokens=3)
    # A guard against a wait with no end (it would hang the suite), not a measure of speed.
    with engine.arriving(), anyio.fail_after(60):
        job = await engine.submit(GenerationRequest(user("Alone."), params))
        events = [event async for event in job.events()]
    assert isinstance(events[-1], Finish) and events[-1].reason == "length"
