"""Grammar compilation, validation and masking against SmolLM2's real vocabulary."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from llguidance import LLTokenizer

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.errors import InvalidGrammar
from exloop.engine.protocol import Grammar


@pytest.fixture
def compiler(lltokenizer: LLTokenizer) -> GrammarCompiler:
    return GrammarCompiler(lltokenizer)


@pytest.mark.parametrize(
    "grammar",
    [
        Grammar("regex", "[0-9"),
        Grammar("lark", "start: undefined_rule"),
        Grammar("json_schema", "{not json"),
        Grammar("json_schema", {"type": "no-such-type"}),
        Grammar("json_schema", "[1, 2]"),
        Grammar("llguidance", {"grammars": "not a list"}),
    ],
)
def test_invalid_grammars_raise_with_the_param(compiler: GrammarCompiler, grammar: Grammar) -> None:
    with pytest.raises(InvalidGrammar) as caught:
        compiler.compile(grammar, param="response_format")
    assert caught.value.param == "response_format"


def test_equal_schemas_share_one_cache_entry(compiler: GrammarCompiler) -> None:
    first = compiler.compile(Grammar("json_schema", {"type": "object", "required": []}))
    second = compiler.compile(Grammar("json_schema", '{"required": [], "type": "object"}'))
    assert first is second


def test_json_grammar_allows_no_free_whitespace(compiler: GrammarCompiler) -> None:
    compiled = compiler.compile(Grammar("json_schema", {"type": "object"}))
    assert '"whitespace_flexible":false' in compiled.replace(" ", "")


def test_mask_allows_only_grammar_tokens_and_finishes(
    compiler: GrammarCompiler, vocab_model: llama_cpp.Llama
) -> None:
    state = compiler.start(compiler.compile(Grammar("regex", "[0-9]{2}")))
    logits = np.zeros(vocab_model.n_vocab(), dtype=np.float32)
    state.mask_logits(logits)
    allowed = np.flatnonzero(np.isfinite(logits))
    assert 0 < allowed.size < 200
    assert all(vocab_model.detokenize([int(t)]).isdigit() for t in allowed)
    digits = vocab_model.tokenize(b"42", add_bos=False)
    for token_id in digits:
        assert not state.finished
        state.consume(token_id)
    assert state.finished


def test_bitmask_bits_match_masked_logits(
    compiler: GrammarCompiler, vocab_model: llama_cpp.Llama
) -> None:
    state = compiler.start(compiler.compile(Grammar("lark", 'start: "yes" | "no"')))
    words = state.fill_bitmask()[0].copy()
    logits = np.zeros(vocab_model.n_vocab(), dtype=np.float32)
    state.mask_logits(logits)
    for token_id in range(vocab_model.n_vocab()):
        bit = (int(words[token_id // 32]) >> (token_id % 32)) & 1
        assert bool(bit) == bool(np.isfinite(logits[token_id]))
