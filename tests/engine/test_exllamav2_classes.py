"""The GPU backend's pieces against ExLlamaV2's real Python classes, where torch and exllamav2
are installed.

On a machine without CUDA, importing exllamav2 would compile its CUDA extension; a module of
plain-torch stand-ins for the few extension functions that sampling uses takes its place
there (:func:`cpu_extension`), so the pure-Python classes load (``Settings``, the
``ExLlamaV2Filter`` base with its background-worker protocol, ``ExLlamaV2DynamicJob``,
``ExLlamaV2Tokenizer``, the dynamic generator itself). With CUDA the real extension is used.
Without torch or exllamav2 (CI) the module is skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
import types
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.exllamav2_driver import SampledLogprob
from exloop.engine.exllamav2_sampling import OutputPenalties, TokenTexts, plan_sampler
from exloop.engine.exllamav2_vocab import ModelVocabulary
from exloop.engine.protocol import Grammar
from exloop.engine.sampling import DrySettings, SamplingParams

from . import test_exllamav2_vocab as _vocab_tests

# The model directory and its vocabulary, shared with the vocabulary tests.
smollm_dir = _vocab_tests.smollm_dir
vocabulary = _vocab_tests.vocabulary

torch = pytest.importorskip("torch", reason="torch is not installed (the GPU extra brings it)")
if importlib.util.find_spec("exllamav2") is None:
    pytest.skip("exllamav2 is not installed (pip install 'exloop[gpu]')", allow_module_level=True)


def cpu_extension() -> types.ModuleType:
    """The few functions of ``exllamav2_ext`` that sampling and the generator's bookkeeping
    call, in plain torch (greedy and truncated sampling as ``sample_basic`` does them);
    anything else raises. Used only where CUDA is absent, in place of compiling the real one."""
    module = types.ModuleType("exllamav2_ext")

    def count_match(a: Any, b: Any, limit: int) -> int:
        n = min(limit, a.shape[-1], b.shape[-1])
        differ = (a[0, :n] != b[0, :n]).nonzero()
        return int(differ[0, 0]) if len(differ) else n

    def fast_fill_cpu_ones_bool(mask: Any) -> None:
        mask.fill_(True)

    def fast_fadd_cpu(logits: Any, bias: Any) -> None:
        logits += bias[: logits.shape[-1]]

    def logit_filter_exclusive(mask: Any, lists: list[list[int]]) -> None:
        for row, allowed in enumerate(lists):
            keep = mask[row, allowed].clone()
            mask[row] = False
            mask[row, allowed] = keep

    def apply_rep_penalty(
        sequence: Any,
        penalty: float,
        sustain: int,
        decay: int,
        frequency: float,
        presence: float,
        logits: Any,
    ) -> None:
        for row in range(sequence.shape[0]):
            seen = sequence[row].unique()
            values = logits[row, 0, seen]
            logits[row, 0, seen] = torch.where(values > 0, values / penalty, values * penalty)

    def sample_basic(
        logits: Any,
        temperature: float,
        top_k: int,
        top_p: float,
        top_a: float,
        min_p: float,
        tfs: float,
        typical: float,
        random: float,
        output_tokens: Any,
        output_probs: Any,
        output_kprobs: Any,
        output_ktokens: Any,
        logit_filter: Any,
        mirostat: bool,
        mirostat_mu: list[float],
        *rest: Any,
    ) -> list[float]:
        post_temperature = rest[2]
        for row in range(logits.shape[0]):
            values = logits[row, 0].clone()
            if not logit_filter.is_meta:
                values[~logit_filter[row]] = float("-inf")
            if temperature < 0.01:
                top_k, temperature = 1, 1.0
            probs, order = torch.softmax(values / temperature, dim=-1).sort(descending=True)
            keep = len(probs)
            if 0 < top_k < keep:
                keep = top_k
            if 0.0 < top_p < 1.0:
                keep = min(keep, int((probs.cumsum(0) < top_p).sum()) + 1)
            if 0.0 < min_p < 1.0:
                keep = min(keep, int((probs >= min_p * probs[0]).sum()))
            probs, order = probs[:keep], order[:keep]
            if post_temperature != 1.0:
                probs = probs ** (1.0 / post_temperature)
            probs = probs / probs.sum()
            pick = min(int((probs.cumsum(0) < random * 0.9998).sum()), keep - 1)
            output_tokens[row, 0] = order[pick]
            output_probs[row, 0] = probs[pick]
            if not output_kprobs.is_meta:
                k = output_kprobs.shape[-1]
                output_ktokens[row, 0, : min(k, keep)] = order[:k]
                output_kprobs[row, 0, : min(k, keep)] = probs[:k]
        return mirostat_mu

    for function in (
        count_match,
        fast_fill_cpu_ones_bool,
        fast_fadd_cpu,
        logit_filter_exclusive,
        apply_rep_penalty,
        sample_basic,
    ):
        setattr(module, function.__name__, function)

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: object, **kwargs: object) -> None:
            raise NotImplementedError(f"exllamav2_ext.{name} needs the CUDA extension")

        return unavailable

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


if not torch.cuda.is_available():
    sys.modules.setdefault("exllamav2_ext", cpu_extension())

backend = importlib.import_module("exloop.engine.exllamav2_backend")
from exllamav2 import ExLlamaV2Config, ExLlamaV2Tokenizer  # noqa: E402
from exllamav2.generator import ExLlamaV2Sampler  # noqa: E402


def test_settings_hold_every_planned_value() -> None:
    params = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
        logit_bias={3: -100.0, 7: 2.0},
        dry=DrySettings(multiplier=0.8, base=1.5, allowed_length=3, sequence_breakers=("\n",)),
    )
    plan = plan_sampler(params, TokenTexts(["a", "\n", "b", "c", "d\n", "e", "f", "g"]))
    settings = backend.sampler_settings(plan, 32)
    library = ExLlamaV2Sampler.Settings()
    expected = plan.settings_fields()
    for field in dataclasses.fields(ExLlamaV2Sampler.Settings):
        value = getattr(settings, field.name)
        if field.name == "token_bias":
            assert value.shape == (32,) and value.dtype == torch.float
            assert value[3] == -100.0 and value[7] == 2.0 and float(value.abs().sum()) == 102.0
        elif field.name in expected:
            assert value == expected[field.name], field.name
    assert (settings.top_k, settings.top_p, settings.temperature) == (40, 0.9, 0.7)
    assert (library.top_k, library.top_p) == (50, 0.8)  # what an unset field would have been
    assert settings.dry_base == 1.5 and settings.dry_sequence_breakers == {1, 4}
    assert settings.temperature_last
    other = backend.sampler_settings(plan, 32)
    assert other.ngram_history is not settings.ngram_history
    assert other.post_sampling_hooks is not settings.post_sampling_hooks
    assert (
        backend.sampler_settings(plan_sampler(SamplingParams(), TokenTexts(["a"])), 32).token_bias
        is None
    )


@pytest.mark.anyio
async def test_grammar_filter_under_the_generators_protocol(vocabulary: ModelVocabulary) -> None:
    """Drive the filter as ``ExLlamaV2Sampler.sample`` and ``ExLlamaV2DynamicJob`` do: the
    mask branch (``get_next(mask=True)``, ``mask_logits`` on ``logits[0][0]``), ``feed`` with
    a ``(1, 1)`` tensor, then ``background_prepare_logit_mask`` on the filter pool."""
    compiler = GrammarCompiler(vocabulary.lltokenizer)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    width = -(-vocabulary.vocab_size // 32) * 32
    try:
        compiled = await compiler.compile(Grammar("json_schema", schema))
    finally:
        compiler.close()
    grammar_filter = backend.GrammarFilter(
        None,
        None,
        compiler.start(compiled),
        width=width,
        stop_token_ids=vocabulary.stop_token_ids,
    )
    wanted = vocabulary.lltokenizer.tokenize_str('{"ok":true}')
    out: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        grammar_filter.background_drop()
        grammar_filter.begin("")
        for step in range(20):
            assert grammar_filter.can_mask_logits() and grammar_filter.use_background_worker()
            logits = torch.zeros((1, 1, width), dtype=torch.float)
            if step < len(wanted):
                logits[0, 0, wanted[step]] = 10.0
            logits[0, 0, vocabulary.stop_token_ids[0]] = 5.0
            assert grammar_filter.get_next(mask=True) is True
            logits = grammar_filter.mask_logits(logits[0][0]).view(1, 1, -1)
            token = torch.argmax(logits, dim=-1)
            grammar_filter.feed(token)
            if int(token.item()) in vocabulary.stop_token_ids:
                break
            out.append(int(token.item()))
            grammar_filter.background_prepare_logit_mask(pool)
    assert b"".join(vocabulary.pieces[t] for t in out) == b'{"ok":true}'
    assert grammar_filter.finished and grammar_filter.error is None


def test_sampling_hooks_record_the_models_own_logprobs() -> None:
    records: deque[SampledLogprob] = deque()
    hooks = backend.SamplingHooks(
        vocab_size=6,
        prompt_tokens=2,
        penalties=OutputPenalties(frequency=1.0, presence=0.5),
        records=records,
        top=2,
    )
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 0.5, 0.0, 9.0, 9.0]]])  # two padding rows
    raw = logits.clone()
    sequence = torch.tensor([[3, 3, 2, 2, 1]])  # prompt (3, 3), then output 2, 2, 1
    after = hooks.before(logits, sequence)
    # Output tokens only: token 2 twice (2 * 1.0 + 0.5), token 1 once (1.0 + 0.5); 3 untouched.
    assert logits[0, 0, :6].tolist() == pytest.approx([0.0, -0.5, -0.5, 3.0, 0.5, 0.0])
    after(3)
    expected = torch.log_softmax(raw[0, 0, :6], dim=-1)
    (record,) = records
    assert record.token_id == 3 and record.logprob == pytest.approx(float(expected[3]))
    assert [t for t, _ in record.top] == [3, 2]
    assert record.top[1][1] == pytest.approx(float(expected[2]))


def test_hooks_stay_out_of_the_way_when_unused() -> None:
    hooks = backend.SamplingHooks(
        vocab_size=4, prompt_tokens=1, penalties=None, records=None, top=0
    )
    assert not hooks.active


def test_exllamav2_tokenizes_prompts_as_llama_cpp(
    smollm_dir: Path, vocab_model: llama_cpp.Llama
) -> None:
    """Special tokens in the rendered template become their ids (encode_special_tokens)."""
    config = ExLlamaV2Config()
    config.model_dir = str(smollm_dir)
    settings = json.loads((smollm_dir / "config.json").read_text())
    config.vocab_size, config.bos_token_id, config.eos_token_id = 49152, settings["bos_token_id"], 2
    config.pad_token_id = None
    tokenizer = ExLlamaV2Tokenizer(config)
    text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nGrüße 世界<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode(text, encode_special_tokens=True)[0].tolist()
    assert ids == vocab_model.tokenize(text.encode(), add_bos=False, special=True)
    assert np.asarray(ids).max() < 49152


def test_load_model_says_what_is_wrong(tmp_path: Path, smollm_dir: Path) -> None:  # noqa: F811
    from exloop.engine.errors import EngineError, InvalidParameter, ModelNotFound

    with pytest.raises(ModelNotFound, match="No model directory"):
        backend.load_model(tmp_path / "missing")
    with pytest.raises(InvalidParameter) as caught:
        backend.load_model(smollm_dir, cache_mode="fp8")  # type: ignore[arg-type]
    assert caught.value.param == "cache_mode"
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="needs CUDA"):
            backend.load_model(smollm_dir)
