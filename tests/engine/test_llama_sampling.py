"""Every sampling field, observed on the real default model (SmolLM2-135M)."""

from __future__ import annotations

import ctypes
import math
from dataclasses import replace

import llama_cpp
import numpy as np
import pytest

from exloop.engine.errors import InvalidParameter
from exloop.engine.llama_batch import TokenBatch
from exloop.engine.llama_cpp import LlamaCppEngine, _new_context
from exloop.engine.llama_sampler import (
    DryStages,
    GreedySampler,
    NativeSampler,
    make_sampler,
    needs_chain,
)
from exloop.engine.protocol import GenerationRequest
from exloop.engine.sampling import DrySettings, SamplingParams

from .collect import Output, collect, generate, matches_alone, user

pytestmark = pytest.mark.anyio

STORY = "Tell me a short story about a dragon."
REPEAT = "Repeat the word 'apple' fifty times, separated by spaces."


async def repeat(engine: LlamaCppEngine, **sampling: object) -> tuple[Output, Output]:
    """The same request twice, with another job between them; compared within llama.cpp's
    numeric drift (:func:`.collect.matches_alone`)."""
    params = SamplingParams(logprobs=True, top_logprobs=2, **sampling)  # type: ignore[arg-type]
    request = GenerationRequest(user(STORY), params)
    first = await collect(engine, request)
    await generate(engine, "Something else entirely.", temperature=1.0, max_tokens=8)
    second = await collect(engine, request)
    matches_alone(first, second, request)
    return first, second


async def test_greedy_is_deterministic(engine: LlamaCppEngine) -> None:
    first, second = await repeat(engine, temperature=0.0, max_tokens=24)
    assert first.text


async def test_same_seed_same_output_whatever_ran_before(engine: LlamaCppEngine) -> None:
    first, _ = await repeat(engine, temperature=1.0, seed=1234, max_tokens=24)
    other = await generate(engine, STORY, temperature=1.0, seed=1235, max_tokens=24)
    assert other.token_ids != first.token_ids


async def test_max_tokens_ends_with_length(engine: LlamaCppEngine) -> None:
    out = await generate(engine, STORY, temperature=0.0, max_tokens=5)
    assert out.finish.reason == "length"
    assert len(out.token_ids) == out.finish.usage.completion_tokens == 5


async def test_end_of_turn_ends_with_eos(engine: LlamaCppEngine) -> None:
    out = await generate(engine, "Say hello.", temperature=0.0, max_tokens=100)
    assert out.finish.reason == "eos"
    assert out.finish.usage.completion_tokens < 100
    assert "<|im_end|>" not in out.text


async def test_stop_split_across_tokens_never_leaks(engine: LlamaCppEngine) -> None:
    base = await generate(engine, STORY, temperature=0.0, max_tokens=30)
    pieces = [engine._model.piece(t).decode() for t in base.token_ids]
    # A stop sequence from the last 3 characters of one token and the first 2 of the next.
    boundary = next(
        i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 4 and len(pieces[i + 1]) >= 3
    )
    prefix = "".join(pieces[: boundary + 1])
    stop = prefix[-3:] + pieces[boundary + 1][:2]
    assert base.text.find(stop) == len(prefix) - 3
    out = await generate(engine, STORY, temperature=0.0, max_tokens=30, stop=(stop, "zzzz"))
    assert out.finish.reason == "stop"
    assert out.finish.stop_sequence == stop
    assert out.text == base.text[: len(prefix) - 3]
    assert stop not in out.text


async def test_logit_bias_forces_and_bans(engine: LlamaCppEngine) -> None:
    base = await generate(engine, STORY, temperature=0.0, max_tokens=6)
    first = base.token_ids[0]
    banned = await generate(
        engine, STORY, temperature=0.0, max_tokens=6, logit_bias={first: -100.0}
    )
    assert first not in banned.token_ids
    forced_id = engine._model.tokenize(b" banana", add_bos=False)[0]
    forced = await generate(
        engine, STORY, temperature=1.0, seed=5, max_tokens=4, logit_bias={forced_id: 100.0}
    )
    assert forced.token_ids == (forced_id,) * 4


async def test_special_tokens_other_than_eog_are_text(engine: LlamaCppEngine) -> None:
    im_start = engine._model.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1
    out = await generate(
        engine, STORY, temperature=0.0, max_tokens=1, logit_bias={im_start[0]: 100.0}
    )
    assert out.text == "<|im_start|>"


@pytest.mark.parametrize("top", [0, 1, 5, 20])
async def test_top_logprobs_count_and_order(engine: LlamaCppEngine, top: int) -> None:
    out = await generate(
        engine, STORY, temperature=0.0, max_tokens=4, logprobs=True, top_logprobs=top
    )
    assert len(out.logprobs) == len(out.token_ids) == 4
    for token_id, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert entry.token_id == token_id
        assert entry.logprob <= 0.0
        assert len(entry.top) == top
        values = [alt.logprob for alt in entry.top]
        assert values == sorted(values, reverse=True)
        if top:
            # Greedy picks the most likely token.
            assert entry.top[0].token_id == token_id
            assert math.isclose(entry.top[0].logprob, entry.logprob)
    plain = await generate(engine, STORY, temperature=0.0, max_tokens=4)
    assert plain.logprobs == ()


async def test_dry_breaks_a_forced_repetition(engine: LlamaCppEngine) -> None:
    base = await generate(engine, REPEAT, temperature=0.0, max_tokens=40)
    dry = await generate(
        engine, REPEAT, temperature=0.0, max_tokens=40, dry=DrySettings(multiplier=2.0)
    )
    assert base.text.count("apple") >= 15
    assert dry.text.count("apple") < base.text.count("apple") / 2


@pytest.mark.parametrize(
    "penalty",
    [{"repetition_penalty": 1.5}, {"frequency_penalty": 1.5}, {"presence_penalty": 2.0}],
)
async def test_penalties_make_output_less_repetitive(
    engine: LlamaCppEngine, penalty: dict[str, float]
) -> None:
    base = await generate(engine, STORY, temperature=0.0, max_tokens=40)
    penalised = await generate(engine, STORY, temperature=0.0, max_tokens=40, **penalty)
    assert penalised.token_ids != base.token_ids
    assert _distinct_share(penalised.token_ids) > _distinct_share(base.token_ids)


def _distinct_share(token_ids: tuple[int, ...]) -> float:
    return len(set(token_ids)) / len(token_ids)


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 0.01}, {"min_p": 1.0}])
async def test_truncation_to_the_top_token_is_greedy(
    engine: LlamaCppEngine, truncation: dict[str, float]
) -> None:
    greedy = await generate(
        engine, STORY, temperature=0.0, max_tokens=16, logprobs=True, top_logprobs=2
    )
    for seed in (1, 2):
        params = SamplingParams(
            temperature=2.0,
            seed=seed,
            max_tokens=16,
            logprobs=True,
            top_logprobs=2,
            **truncation,  # type: ignore[arg-type]
        )
        hot = await collect(engine, GenerationRequest(user(STORY), params))
        # As greedy, within llama.cpp's numeric drift between two runs.
        matches_alone(greedy, hot, GenerationRequest(user(STORY), replace(params, temperature=0.0)))


async def test_without_truncation_hot_sampling_strays(engine: LlamaCppEngine) -> None:
    greedy = await generate(engine, STORY, temperature=0.0, max_tokens=16)
    hot = [
        await generate(engine, STORY, temperature=2.0, seed=seed, max_tokens=16) for seed in (1, 2)
    ]
    assert all(out.token_ids != greedy.token_ids for out in hot)


async def test_moderate_top_k_keeps_tokens_within_the_top_k(engine: LlamaCppEngine) -> None:
    for seed in range(3):
        out = await generate(
            engine,
            STORY,
            temperature=2.0,
            seed=seed,
            max_tokens=8,
            top_k=3,
            logprobs=True,
            top_logprobs=3,
        )
        for entry in out.logprobs:
            assert entry.token_id in {alt.token_id for alt in entry.top}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("top_k", -1),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 3.0),
        ("presence_penalty", -3.0),
        ("logit_bias", {5: 101.0}),
        ("stop", ("",)),
        ("max_tokens", 0),
        ("top_logprobs", 21),
    ],
)
async def test_out_of_range_values_name_the_field(
    engine: LlamaCppEngine, field: str, value: object
) -> None:
    request = GenerationRequest(user(STORY), SamplingParams(**{field: value}))  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter) as checked:
        await engine.check(request)
    assert checked.value.param == field
    with pytest.raises(InvalidParameter):
        await engine.submit(request)


async def test_dry_out_of_range_names_the_field(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(user(STORY), SamplingParams(dry=DrySettings(multiplier=-1.0)))
    with pytest.raises(InvalidParameter) as checked:
        await engine.check(request)
    assert checked.value.param == "dry_multiplier"


def test_dry_stages_are_prepared_once_and_cloned_per_job(vocab_model: llama_cpp.Llama) -> None:
    stages = DryStages(llama_cpp.llama_model_get_vocab(vocab_model.model), 512)
    try:
        dry = DrySettings(multiplier=0.8, sequence_breakers=("\n", "word"))
        stages.prepare(dry)
        first, second = stages.clone(dry), stages.clone(dry)
        addresses = {ctypes.cast(stage, ctypes.c_void_p).value for stage in (first, second)}
        assert len(addresses) == 2 and None not in addresses  # each job owns its own
        for stage in (first, second):
            llama_cpp.llama_sampler_free(stage)
        for n in range(20):
            stages.prepare(DrySettings(multiplier=0.8, sequence_breakers=(f"x{n}",)))
        assert len(stages._prepared) == 16  # the oldest settings were freed
    finally:
        stages.close()


def test_greedy_sampler_picks_what_the_native_chain_picks(engine: LlamaCppEngine) -> None:
    """On the same rows of real logits: no bias, the top token banned, a token lifted to the
    top, a bias that changes nothing, and several at once."""
    model = engine._model
    ctx = _new_context(model, 4 * 64, 4, (1, 1), "auto")
    dry = DryStages(model.vocab, 64)
    try:
        batch = TokenBatch(64)
        prompts = [model.tokenize(text.encode(), add_bos=True) for text in (STORY, REPEAT)]
        rows = [batch.add(seq, tokens, 0, logits=True) for seq, tokens in enumerate(prompts)]
        assert batch.decode(ctx) == 0
        views = [
            np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(model.n_vocab,))
            for row in rows
        ]
        originals = [view.copy() for view in views]
        # The step's logits in one view: the same rows, in the order they were added.
        np.testing.assert_array_equal(batch.logits(ctx, model.n_vocab), np.stack(originals))
        top = [int(view.argmax()) for view in views]
        biases: list[dict[int, float]] = [
            {},
            {top[0]: -100.0, top[1]: -100.0},
            {7: 100.0},
            {top[0]: 0.5, 9: -3.0},
            {top[0]: -100.0, top[1]: -100.0, 7: 2.0, 11: -1.0},
        ]
        for bias in biases:
            params = SamplingParams(temperature=0.0, logit_bias=bias)
            assert not needs_chain(params)
            assert isinstance(make_sampler(dry, model.n_vocab, 64, params, []), GreedySampler)
            native = NativeSampler(dry, model.n_vocab, 64, params, [])
            try:
                expected = [native.sample(ctx, row, views[i]) for i, row in enumerate(rows)]
            finally:
                native.close()
            greedy = GreedySampler(params)
            logits = batch.logits(ctx, model.n_vocab)
            assert [greedy.sample(ctx, row, logits[i]) for i, row in enumerate(rows)] == (
                expected
            ), bias
            for view, original in zip(views, originals, strict=True):
                view[:] = original  # the greedy sampler biased them in place
        assert expected[0] not in top and expected[1] not in top  # the last set banned both
    finally:
        dry.close()
        llama_cpp.llama_free(ctx)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0.0, repetition_penalty=1.1),
        SamplingParams(temperature=0.0, frequency_penalty=0.5),
        SamplingParams(temperature=0.0, presence_penalty=0.5),
        SamplingParams(temperature=0.0, dry=DrySettings(multiplier=0.8)),
    ],
)
def test_draws_and_penalties_keep_the_native_chain(params: SamplingParams) -> None:
    assert needs_chain(params)
