"""Constrained decoding with llguidance, for any backend.

A :class:`GrammarCompiler` turns a :class:`~exloop.engine.protocol.Grammar` into llguidance's
grammar text for one tokenizer, validates it (``LLMatcher`` itself never raises, so a bad
grammar must be caught here, before generation) and caches the result. A
:class:`ConstraintState` follows one job: before each token it masks the logits to the tokens
the grammar allows, after it consumes the chosen token, and it says when the grammar is done.
Masks are applied with numpy; a GPU backend can take :meth:`ConstraintState.fill_bitmask`
instead and apply it on the device.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from llguidance import LLExecutor, LLMatcher, LLTokenizer
from llguidance.numpy import (
    allocate_token_bitmask,
    fill_next_token_bitmask,
    fill_next_token_bitmask_par,
)

from .errors import GenerationFailed, InvalidGrammar
from .protocol import Grammar

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

#: JSON output without free whitespace: a small model given ``[ \t\n]*`` between tokens can
#: spin on whitespace until it runs out of tokens.
JSON_COMPILE_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}

_CACHE_SIZE = 256


class GrammarCompiler:
    """Compiles and validates grammars for one tokenizer; thread-safe, with an LRU cache."""

    def __init__(self, tokenizer: LLTokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, grammar: Grammar, *, param: str = "grammar") -> str:
        """llguidance grammar text for ``grammar``; raises :class:`InvalidGrammar` naming
        ``param`` when it does not compile."""
        key = (grammar.kind, _canonical_value(grammar, param))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        compiled = self._build(grammar.kind, key[1], param)
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def start(self, compiled: str) -> ConstraintState:
        """A fresh matcher for one job, from :meth:`compile`'s result."""
        return ConstraintState(LLMatcher(self.tokenizer, compiled, log_level=0), self.tokenizer)

    def _build(self, kind: str, value: str, param: str) -> str:
        try:
            if kind == "regex":
                text = LLMatcher.grammar_from_regex(value)
            elif kind == "lark":
                text = LLMatcher.grammar_from_lark(value)
            elif kind == "json_schema":
                text = LLMatcher.grammar_from_json_schema(value, defaults=JSON_COMPILE_DEFAULTS)
            elif kind == "llguidance":
                text = value
            else:
                raise InvalidGrammar(f"Unknown grammar kind {kind!r}.", param=param)
        except ValueError as exc:
            raise InvalidGrammar(f"Invalid {kind} grammar: {exc}", param=param) from exc
        error = LLMatcher.validate_grammar(text, self.tokenizer)
        if error:
            raise InvalidGrammar(f"Invalid {kind} grammar: {error}", param=param)
        return text


def _canonical_value(grammar: Grammar, param: str) -> str:
    """The grammar's text, with JSON documents normalised so equal schemas share a cache entry."""
    if grammar.kind not in ("json_schema", "llguidance"):
        if not isinstance(grammar.value, str):
            raise InvalidGrammar(f"A {grammar.kind} grammar must be a string.", param=param)
        return grammar.value
    document: object = grammar.value
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError as exc:
            raise InvalidGrammar(
                f"The {grammar.kind} grammar is not JSON: {exc}", param=param
            ) from exc
    if grammar.kind == "json_schema" and isinstance(document, bool):
        # `true` accepts any JSON value, `false` nothing; llguidance wants an object.
        document = {} if document else {"not": {}}
    if not isinstance(document, Mapping):
        raise InvalidGrammar(f"The {grammar.kind} grammar must be a JSON object.", param=param)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ConstraintState:
    """One job's position in its grammar."""

    def __init__(self, matcher: LLMatcher, tokenizer: LLTokenizer) -> None:
        self._matcher = matcher
        self._bitmask = allocate_token_bitmask(1, tokenizer.vocab_size)
        self._raise_if_error()

    @property
    def finished(self) -> bool:
        """The grammar can accept nothing more: the job should end with reason ``eos``."""
        return self._matcher.is_stopped()

    def fill_bitmask(self) -> npt.NDArray[np.int32]:
        """The allowed next tokens as llguidance's bitmask (shape ``(1, ceil(vocab/32))``,
        bit ``i % 32`` of word ``i // 32`` set when token ``i`` is allowed)."""
        fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        self._raise_if_error()
        return self._bitmask

    def mask_logits(self, logits: npt.NDArray[np.float32]) -> None:
        """Set the logits of every token the grammar forbids to ``-inf``, in place."""
        apply_bitmask(self.fill_bitmask()[0], logits)

    def consume(self, token_id: int) -> None:
        """Advance past the sampled token (which the mask allowed)."""
        if not self._matcher.consume_token(token_id):
            self._raise_if_error()
            raise GenerationFailed(f"The constraint rejected token {token_id}.")

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            raise GenerationFailed(f"Constraint failed: {self._matcher.get_error()}")


class BatchMasks:
    """The next-token masks of several jobs' constraints, computed together.

    llguidance fills them in one call on its own thread pool (``threads`` workers), so a batch
    of constrained jobs costs about what the slowest of them does.
    """

    def __init__(self, vocab_size: int, *, threads: int | None = None) -> None:
        self._vocab_size = vocab_size
        self._executor = LLExecutor(threads)
        self._bitmask = allocate_token_bitmask(1, vocab_size)

    def fill(self, states: list[ConstraintState]) -> None:
        """Compute the masks of ``states``, row ``i`` for ``states[i]``; a constraint in error
        raises from its :meth:`apply` (failing its own job only)."""
        if self._bitmask.shape[0] < len(states):
            self._bitmask = allocate_token_bitmask(len(states), self._vocab_size)
        fill_next_token_bitmask_par(
            self._executor, [(state._matcher, i) for i, state in enumerate(states)], self._bitmask
        )

    def apply(self, index: int, state: ConstraintState, logits: npt.NDArray[np.float32]) -> None:
        """Mask ``logits`` in place with row ``index`` (filled for ``state``)."""
        state._raise_if_error()
        apply_bitmask(self._bitmask[index], logits)


def apply_bitmask(words: npt.NDArray[np.int32], logits: npt.NDArray[np.float32]) -> None:
    """Set ``logits`` to ``-inf`` wherever llguidance's bitmask row ``words`` has a 0 bit."""
    # Invert the words and unpack the bits little-endian: a 1 marks a forbidden token.
    forbidden = np.unpackbits(np.invert(words).view(np.uint8), bitorder="little")
    np.copyto(logits, -np.inf, where=forbidden[: logits.shape[0]].view(np.bool_))
