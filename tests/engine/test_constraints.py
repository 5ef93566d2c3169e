"""Grammar compilation, validation and masking against SmolLM2's real vocabulary; the compile
budget (deadline, memory cap, cancellation) and the byte-bounded cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import llama_cpp
import numpy as np
import pytest
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.errors import InvalidGrammar
from exloop.engine.grammar_sandbox import CompileBudget, vocabulary_setup
from exloop.engine.grammar_worker import build_tokenizer
from exloop.engine.protocol import Grammar

pytestmark = pytest.mark.anyio

#: A 6.7 KB schema whose 150 intersected patterns made llguidance allocate without bound.
PATTERN_BOMB = {
    "type": "object",
    "properties": {
        "x": {"allOf": [{"type": "string", "pattern": f"^.*{i}.*$"} for i in range(150)]}
    },
}


@pytest.fixture
def compiler(lltokenizer: LLTokenizer) -> Iterator[GrammarCompiler]:
    compiler = GrammarCompiler(lltokenizer)
    yield compiler
    compiler.close()


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
async def test_invalid_grammars_raise_with_the_param(
    compiler: GrammarCompiler, grammar: Grammar
) -> None:
    with pytest.raises(InvalidGrammar) as caught:
        await compiler.compile(grammar, param="response_format")
    assert caught.value.param == "response_format"


async def test_messages_hold_no_parser_internals(compiler: GrammarCompiler) -> None:
    # llguidance describes this one with a dump of its regex AST.
    schema = {"allOf": [{"type": "string", "pattern": f"^.*{i}.*$"} for i in range(12)]}
    with pytest.raises(InvalidGrammar) as caught:
        await compiler.compile(Grammar("json_schema", schema))
    assert "(And" not in caught.value.message and "SearchRegex" not in caught.value.message
    assert len(caught.value.message) < 400


async def test_equal_schemas_share_one_cache_entry(compiler: GrammarCompiler) -> None:
    first = await compiler.compile(Grammar("json_schema", {"type": "object", "required": []}))
    second = await compiler.compile(Grammar("json_schema", '{"required": [], "type": "object"}'))
    assert first is second


async def test_json_grammar_allows_no_free_whitespace(compiler: GrammarCompiler) -> None:
    compiled = await compiler.compile(Grammar("json_schema", {"type": "object"}))
    assert '"whitespace_flexible":false' in compiled.text.replace(" ", "")


async def test_mask_allows_only_grammar_tokens_and_finishes(
    compiler: GrammarCompiler, vocab_model: llama_cpp.Llama
) -> None:
    state = compiler.start(await compiler.compile(Grammar("regex", "[0-9]{2}")))
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


async def test_jobs_get_independent_copies(compiler: GrammarCompiler) -> None:
    compiled = await compiler.compile(Grammar("regex", "[0-9]{2}"))
    first, second = compiler.start(compiled), compiler.start(compiled)
    first.consume(compiler.tokenizer.tokenize_str("4")[0])
    first.consume(compiler.tokenizer.tokenize_str("2")[0])
    assert first.finished and not second.finished


async def test_bitmask_bits_match_masked_logits(
    compiler: GrammarCompiler, vocab_model: llama_cpp.Llama
) -> None:
    state = compiler.start(await compiler.compile(Grammar("lark", 'start: "yes" | "no"')))
    words = state.fill_bitmask()[0].copy()
    logits = np.zeros(vocab_model.n_vocab(), dtype=np.float32)
    state.mask_logits(logits)
    for token_id in range(vocab_model.n_vocab()):
        bit = (int(words[token_id // 32]) >> (token_id % 32)) & 1
        assert bool(bit) == bool(np.isfinite(logits[token_id]))


def test_the_workers_token_trie_gives_the_same_masks(lltokenizer: LLTokenizer) -> None:
    """The worker rebuilds the tokenizer from token bytes: it must be the same trie."""
    rebuilt = build_tokenizer(vocabulary_setup(lltokenizer, 0))
    assert rebuilt.vocab_size == lltokenizer.vocab_size
    assert rebuilt.eos_tokens == lltokenizer.eos_tokens
    text = LLMatcher.grammar_from_json_schema(
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    )
    original, copy = LLMatcher(lltokenizer, text), LLMatcher(rebuilt, text)
    masks = [allocate_token_bitmask(1, lltokenizer.vocab_size) for _ in range(2)]
    for token_id in lltokenizer.tokenize_str('{"a":"<|im_end|> x"}'):
        fill_next_token_bitmask(original, masks[0], 0)
        fill_next_token_bitmask(copy, masks[1], 0)
        assert (masks[0] == masks[1]).all()
        assert original.consume_token(token_id) and copy.consume_token(token_id)


async def test_a_grammar_past_the_memory_cap_is_too_complex(lltokenizer: LLTokenizer) -> None:
    compiler = GrammarCompiler(lltokenizer, CompileBudget(timeout=60.0, memory=128 << 20))
    try:
        with pytest.raises(InvalidGrammar, match="too complex") as caught:
            await compiler.compile(Grammar("json_schema", PATTERN_BOMB), param="text.format")
        assert "128 MiB" in caught.value.message and caught.value.param == "text.format"
        # The pool replaces the worker that died.
        await compiler.compile(Grammar("regex", "[a-z]+"))
    finally:
        compiler.close()


async def test_a_grammar_past_the_deadline_is_too_complex(lltokenizer: LLTokenizer) -> None:
    compiler = GrammarCompiler(lltokenizer, CompileBudget(timeout=0.5, memory=4 << 30))
    try:
        with pytest.raises(InvalidGrammar, match=r"took longer than 0\.5 s"):
            await compiler.compile(Grammar("json_schema", PATTERN_BOMB))
        await compiler.compile(Grammar("regex", "[a-z]+"))
    finally:
        compiler.close()


async def test_a_cancelled_compile_stops_at_once(lltokenizer: LLTokenizer) -> None:
    compiler = GrammarCompiler(lltokenizer, CompileBudget(timeout=600.0, memory=8 << 30, workers=1))
    try:
        await compiler.compile(Grammar("regex", "[a-z]+"))  # a started worker
        (worker,) = _workers()
        with anyio.move_on_after(0.3):
            await compiler.compile(Grammar("json_schema", PATTERN_BOMB))
        # That worker was killed, not left compiling for minutes.
        assert worker not in _workers()
        await compiler.compile(Grammar("regex", "[0-9]+"))
    finally:
        compiler.close()


def _workers() -> set[int]:
    """Process ids of this process's running grammar workers."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        zombie = "State:\tZ" in status
        if b"grammar_worker" in command and int(parent.split()[1]) == os.getpid() and not zombie:
            found.add(int(entry.name))
    return found


async def test_the_cache_keeps_within_its_bytes(lltokenizer: LLTokenizer) -> None:
    compiler = GrammarCompiler(lltokenizer, CompileBudget(cache_bytes=2 << 20))
    try:
        sizes = []
        for n in range(12):
            properties = {f"p{i}": {"type": "string"} for i in range(50 + n)}
            schema = {"type": "object", "properties": properties}
            compiled = await compiler.compile(Grammar("json_schema", schema))
            sizes.append(compiled.size)
            assert compiler.cached_bytes <= 2 << 20
        assert sum(sizes) > 2 << 20  # some were evicted
        assert min(sizes) > len(compiled.text)  # the matcher's own memory is counted
    finally:
        compiler.close()
