"""The GPU backend's generator thread, against a scripted generator that answers ``iterate()``
with result dicts shaped as ExLlamaV2 0.3.2's ``ExLlamaV2DynamicGenerator`` shapes them.

The scripted generator "generates" a job's prompt tokens back, one per iteration for every
active job, holds an incomplete UTF-8 byte until the next token as ExLlamaV2 does, ends a job
on a stop token (handing back its held tokens and the stop token under ``"held"``) or at
``max_new_tokens``, and starts at most ``batch`` jobs at a time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pytest
from llguidance import LLTokenizer

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.errors import GenerationFailed, InvalidParameter
from exloop.engine.exllamav2_driver import (
    GeneratorDriver,
    NativeGenerator,
    PreparedJob,
    SampledLogprob,
)
from exloop.engine.exllamav2_filter import GrammarFilterCore
from exloop.engine.handoff import ThreadedJob
from exloop.engine.protocol import (
    Delta,
    Finish,
    GenerationRequest,
    Grammar,
    JobEvent,
    Started,
    TokenPrompt,
)
from exloop.engine.sampling import SamplingParams

pytestmark = pytest.mark.anyio

EOS, HEL, LO, WOR, LD, HALF, REST, BANG = range(8)
PIECES = (b"<eos>", b"Hel", b"lo", b" wor", b"ld", b"\xe4", b"\xb8\x96", b"!")


@dataclass
class FakeJob:
    script: list[int]
    max_new_tokens: int
    identifier: ThreadedJob
    records: deque[SampledLogprob] | None
    new_tokens: int = 0
    held: list[int] = field(default_factory=list)


class ScriptedGenerator:
    def __init__(
        self,
        batch: int = 8,
        fail_on: int | None = None,
        delay: float = 0.0,
        fail_cancel: bool = False,
    ) -> None:
        self.batch = batch
        self.fail_on = fail_on
        self.fail_cancel = fail_cancel
        self.delay = delay
        self.iterations = 0
        self.pending_jobs: list[FakeJob] = []
        self.active_jobs: list[FakeJob] = []
        self.cancelled: list[FakeJob] = []

    def enqueue(self, job: FakeJob) -> int:
        self.pending_jobs.append(job)
        return len(self.pending_jobs)

    def cancel(self, job: FakeJob) -> None:
        if self.fail_cancel:
            raise RuntimeError("page table corrupted")
        if job in self.pending_jobs:
            self.pending_jobs.remove(job)
        elif job in self.active_jobs:
            self.active_jobs.remove(job)
        else:
            return
        self.cancelled.append(job)

    def iterate(self) -> list[dict[str, Any]]:
        self.iterations += 1
        time.sleep(self.delay)
        results: list[dict[str, Any]] = []
        while self.pending_jobs and len(self.active_jobs) < self.batch:
            job = self.pending_jobs.pop(0)
            self.active_jobs.append(job)
            results.append(
                {"job": job, "stage": "started", "eos": False, "identifier": job.identifier}
            )
        if self.iterations == self.fail_on:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        for job in list(self.active_jobs):
            results.append(self._step(job))
        return results

    def _step(self, job: FakeJob) -> dict[str, Any]:
        token = job.script[job.new_tokens] if job.new_tokens < len(job.script) else BANG
        job.new_tokens += 1
        if job.records is not None:
            job.records.append(
                SampledLogprob(token, -0.5, ((token, -0.5), (EOS, -2.0), (BANG, -3.0)))
            )
        job.held.append(token)
        result: dict[str, Any] = {
            "job": job,
            "stage": "streaming",
            "eos": False,
            "identifier": job.identifier,
        }
        if token == EOS:
            self.active_jobs.remove(job)
            result.update(
                eos=True,
                eos_reason="stop_token",
                cached_tokens=3,
                held={"token_ids": np.array([job.held])},
            )
            return result
        if token == HALF:  # an incomplete character: ExLlamaV2 holds it back
            return result
        result["token_ids"] = np.array([job.held])
        job.held = []
        if job.new_tokens >= job.max_new_tokens:
            self.active_jobs.remove(job)
            result.update(eos=True, eos_reason="max_new_tokens", cached_tokens=0)
        return result


class Harness:
    def __init__(
        self,
        *generators: ScriptedGenerator,
        constraint: Callable[[], GrammarFilterCore] | None = None,
    ) -> None:
        self.generators = deque(generators)
        self.built: list[tuple[ScriptedGenerator, NativeGenerator | None]] = []
        self.constraint = constraint
        self.driver = GeneratorDriver(self.make_generator, self.prepare, PIECES)

    @property
    def generator(self) -> ScriptedGenerator:
        return self.built[-1][0]

    def make_generator(self, previous: NativeGenerator | None) -> NativeGenerator:
        generator = self.generators.popleft()
        self.built.append((generator, previous))
        return generator

    def prepare(self, job: ThreadedJob) -> PreparedJob:
        prompt = job.request.prompt
        assert isinstance(prompt, TokenPrompt)
        if not prompt.token_ids:
            raise InvalidParameter("The prompt is empty.", param="prompt")
        params = job.request.sampling
        records: deque[SampledLogprob] | None = deque() if params.logprobs else None
        native = FakeJob(list(prompt.token_ids), params.max_tokens or 100, job, records)
        return PreparedJob(
            native=native,
            prompt_tokens=len(prompt.token_ids),
            cached_tokens=lambda: 7,
            constraint=self.constraint() if self.constraint is not None else None,
            logprobs=records,
        )

    def submit(self, *tokens: int, **sampling: Any) -> ThreadedJob:
        job = ThreadedJob(GenerationRequest(TokenPrompt(tokens), SamplingParams(**sampling)), None)
        self.driver.submit(job)
        return job


@pytest.fixture
def harness() -> Any:
    made = Harness(ScriptedGenerator())
    yield made
    made.driver.close()


async def collect(job: ThreadedJob) -> tuple[str, Finish, list[Delta]]:
    deltas: list[Delta] = []
    finish: Finish | None = None
    async for event in job.events():
        if isinstance(event, Delta):
            deltas.append(event)
        elif isinstance(event, Finish):
            finish = event
    assert finish is not None
    return "".join(d.text for d in deltas), finish, deltas


async def test_text_ends_on_the_stop_token_which_is_not_output(harness: Harness) -> None:
    text, finish, deltas = await collect(harness.submit(HEL, LO, WOR, LD, EOS))
    assert text == "Hello world"
    assert finish.reason == "eos"
    assert finish.usage.prompt_tokens == 5 and finish.usage.completion_tokens == 4
    assert finish.usage.cached_tokens == 3
    assert [t for d in deltas for t in d.token_ids] == [HEL, LO, WOR, LD]


async def test_max_tokens_ends_with_length(harness: Harness) -> None:
    text, finish, _ = await collect(harness.submit(HEL, LO, WOR, LD, EOS, max_tokens=2))
    assert (text, finish.reason, finish.usage.completion_tokens) == ("Hello", "length", 2)


async def test_a_stop_sequence_across_tokens_cancels_the_job_in_the_generator(
    harness: Harness,
) -> None:
    job = harness.submit(HEL, LO, WOR, LD, EOS, stop=("lo wo",))
    text, finish, _ = await collect(job)
    assert (text, finish.reason, finish.stop_sequence) == ("Hel", "stop", "lo wo")
    assert finish.usage.cached_tokens == 7  # read from the job, which never reached its end
    assert [native.identifier for native in harness.generator.cancelled] == [job]


async def test_a_character_split_across_tokens_is_emitted_whole(harness: Harness) -> None:
    text, finish, _ = await collect(harness.submit(HEL, HALF, REST, EOS))
    assert text == "Hel世"
    assert finish.usage.completion_tokens == 3


async def test_held_bytes_at_the_stop_token_are_flushed(harness: Harness) -> None:
    text, finish, deltas = await collect(harness.submit(HEL, HALF, EOS))
    assert text == "Hel\ufffd"
    assert finish.reason == "eos" and finish.usage.completion_tokens == 2
    assert [t for d in deltas for t in d.token_ids] == [HEL, HALF]


async def test_logprobs_follow_their_tokens(harness: Harness) -> None:
    _, _, deltas = await collect(harness.submit(HEL, LO, EOS, logprobs=True, top_logprobs=2))
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert [(lp.token, lp.logprob) for lp in logprobs] == [("Hel", -0.5), ("lo", -0.5)]
    assert [(t.token, t.logprob) for t in logprobs[0].top] == [("Hel", -0.5), ("<eos>", -2.0)]
    assert logprobs[1].bytes == tuple(b"lo")


async def test_cancel_ends_the_job_and_frees_it_in_the_generator() -> None:
    harness = Harness(ScriptedGenerator(delay=0.002))
    try:
        job = harness.submit(*[BANG] * 500)
        seen = 0
        async for event in job.events():
            if isinstance(event, Delta):
                seen += len(event.token_ids)
                job.cancel()
            elif isinstance(event, Finish):
                assert event.reason == "cancelled"
                assert event.usage.completion_tokens == seen < 500
        assert [native.identifier for native in harness.generator.cancelled] == [job]
        assert not harness.generator.active_jobs
        # The generator keeps serving other jobs.
        text, _, _ = await collect(harness.submit(HEL, EOS))
        assert text == "Hel"
    finally:
        harness.driver.close()


async def test_a_consumer_that_leaves_cancels_its_job() -> None:
    harness = Harness(ScriptedGenerator(delay=0.002))
    try:
        job = harness.submit(*[BANG] * 500)
        async with aclosing(job.events()) as events:
            async for _ in events:
                break
        for _ in range(200):
            if harness.generator.cancelled:
                break
            await anyio.sleep(0.005)
        assert [native.identifier for native in harness.generator.cancelled] == [job]
    finally:
        harness.driver.close()


async def test_a_generator_fault_fails_running_jobs_and_requeues_waiting_ones() -> None:
    first = ScriptedGenerator(batch=2, fail_on=2)
    second = ScriptedGenerator(batch=2)
    harness = Harness(first, second)
    try:
        running = [harness.submit(*[BANG] * 50) for _ in range(2)]
        waiting = harness.submit(HEL, LO, EOS)
        for job in running:
            with pytest.raises(GenerationFailed, match="illegal memory access"):
                await collect(job)
        text, finish, _ = await collect(waiting)
        assert (text, finish.reason) == ("Hello", "eos")
        assert harness.built == [(first, None), (second, first)]
    finally:
        harness.driver.close()


async def test_a_failing_prepare_fails_only_that_job(harness: Harness) -> None:
    with pytest.raises(InvalidParameter, match="empty"):
        await collect(harness.submit())
    text, _, _ = await collect(harness.submit(LD, EOS))
    assert text == "ld"


async def test_a_constraint_failure_fails_its_job(lltokenizer: LLTokenizer) -> None:
    compiler = GrammarCompiler(lltokenizer)
    try:
        compiled = await compiler.compile(Grammar("regex", "[0-9]+"))
    finally:
        compiler.close()

    def broken() -> GrammarFilterCore:
        core = GrammarFilterCore(compiler.start(compiled), width=64, stop_token_ids=(EOS,))
        core.feed(np.array([[lltokenizer.tokenize_str("x")[0]]]))  # a token the grammar rejects
        return core

    harness = Harness(ScriptedGenerator(delay=0.001), constraint=broken)
    try:
        with pytest.raises(GenerationFailed, match="Constraint failed"):
            await collect(harness.submit(*[BANG] * 50))
        assert len(harness.generator.cancelled) == 1
    finally:
        harness.driver.close()


async def test_close_cancels_running_jobs() -> None:
    harness = Harness(ScriptedGenerator(delay=0.002))
    job = harness.submit(*[BANG] * 500)
    events = job.events()
    assert isinstance(await events.__anext__(), Started)
    assert isinstance(await events.__anext__(), Delta)
    closer = threading.Thread(target=harness.driver.close)
    closer.start()
    rest: list[JobEvent] = [event async for event in events]
    closer.join()
    assert isinstance(rest[-1], Finish) and rest[-1].reason == "cancelled"


async def test_started_comes_when_the_generator_starts_the_job() -> None:
    harness = Harness(ScriptedGenerator(batch=1, delay=0.002))
    try:
        first = harness.submit(*[BANG] * 20, max_tokens=20)
        second = harness.submit(HEL, EOS)
        seen: list[JobEvent] = []
        async for event in first.events():
            seen.append(event)
        assert isinstance(seen[0], Started) and isinstance(seen[-1], Finish)
        assert not any(isinstance(e, Started) for e in seen[1:])
        # The second job waited for the batch's one place; it starts only now.
        events = [event async for event in second.events()]
        assert isinstance(events[0], Started)
        assert [type(e) for e in events[1:]] == [Delta, Finish]
    finally:
        harness.driver.close()


async def test_a_cancelled_job_never_reaches_the_generator(harness: Harness) -> None:
    job = ThreadedJob(GenerationRequest(TokenPrompt((HEL,))), None)
    job.cancel()
    harness.driver.submit(job)
    _, finish, _ = await collect(job)
    assert finish.reason == "cancelled"
    assert not harness.generator.cancelled


async def test_a_failing_cancel_rebuilds_the_generator_once() -> None:
    harness = Harness(
        ScriptedGenerator(batch=2, delay=0.002, fail_cancel=True), ScriptedGenerator()
    )
    try:
        jobs = [harness.submit(*[BANG] * 500) for _ in range(2)]
        streams = [job.events() for job in jobs]
        # A driver thread that died on the second, stale cancel would leave these waiting.
        with anyio.fail_after(10):
            for stream in streams:
                assert isinstance(await stream.__anext__(), Started)
                assert isinstance(await stream.__anext__(), Delta)
            for job in jobs:
                job.cancel()
            for stream in streams:
                with pytest.raises(GenerationFailed, match="page table corrupted"):
                    async for _ in stream:
                        pass
            assert len(harness.built) == 2
            text, _, _ = await collect(harness.submit(HEL, EOS))
        assert text == "Hel"
    finally:
        harness.driver.close()
