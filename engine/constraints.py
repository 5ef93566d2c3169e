"""Constrained decoding with llguidance, for any backend.

A :class:`GrammarCompiler` turns a :class:`~exloop.engine.protocol.Grammar` into a
:class:`CompiledGrammar` for one tokenizer: compiled first in a worker process within a
:class:`~.grammar_sandbox.CompileBudget` (a grammar that passes the deadline or the memory cap
is refused as too complex, and never runs in the server's process), then built once as a
matcher, off the event loop, that every job copies. Compiled grammars are cached by their
canonical text within a byte budget. A :class:`ConstraintState` follows one job: before each
token it masks the logits to the tokens the grammar allows, after it consumes the chosen
token, and it says when the grammar is done. Masks are applied with numpy; a GPU backend can
take :meth:`ConstraintState.fill_bitmask` instead and apply it on the device.

Client-facing messages never carry llguidance's parser state or grammar dumps; the whole
message is logged at debug level.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import numpy as np
import numpy.typing as npt
from llguidance import LLExecutor, LLMatcher, LLTokenizer
from llguidance.numpy import (
    allocate_token_bitmask,
    fill_next_token_bitmask,
    fill_next_token_bitmask_par,
)

from .errors import ConstraintFailed, GenerationFailed, GrammarTooComplex, InvalidGrammar
from .grammar_sandbox import BudgetExceeded, CompileBudget, GrammarSandbox
from .grammar_worker import Rejected, parser_limits
from .protocol import Grammar

log = logging.getLogger(__name__)

#: How the grammar kinds are named in messages.
_KIND_NAMES = {
    "regex": "regex",
    "lark": "Lark grammar",
    "json_schema": "JSON schema",
    "llguidance": "llguidance grammar",
}
#: Longest llguidance message passed on to clients (its first line, at most this long).
_MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True, eq=False)
class CompiledGrammar:
    """A grammar ready to run: its llguidance text and a matcher each job copies."""

    text: str
    prototype: LLMatcher
    #: Bytes this entry holds (text and matcher, as measured when the worker built it).
    size: int


class GrammarCompiler:
    """Compiles and validates grammars for one tokenizer, with a byte-bounded LRU cache.

    :meth:`compile` is async and never blocks the event loop; :meth:`start` is cheap and
    safe on any thread. :meth:`close` stops the compile workers.
    """

    def __init__(self, tokenizer: LLTokenizer, budget: CompileBudget | None = None) -> None:
        self.tokenizer = tokenizer
        self.budget = budget or CompileBudget()
        self._sandbox = GrammarSandbox(tokenizer, self.budget)
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        """Bytes the cache holds now (never more than ``budget.cache_bytes``)."""
        return self._cached_bytes

    async def compile(self, grammar: Grammar, *, param: str = "grammar") -> CompiledGrammar:
        """The compiled ``grammar``; raises :class:`InvalidGrammar` naming ``param`` when it
        does not compile or is too complex to."""
        key = (grammar.kind, _canonical_value(grammar, param))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        what = _KIND_NAMES.get(grammar.kind)
        if what is None:
            raise InvalidGrammar(f"Unknown grammar kind {grammar.kind!r}.", param=param)
        try:
            reply = await self._sandbox.compile(*key)
        except BudgetExceeded as exc:
            raise GrammarTooComplex(self._too_complex(what, str(exc)), param=param) from None
        except RuntimeError as exc:
            log.error("grammar compile worker failed: %s", exc)
            raise GenerationFailed("The grammar compiler failed.") from exc
        if isinstance(reply, Rejected):
            log.debug("%s refused by llguidance: %s", what, reply.message)
            if reply.too_complex:
                raise GrammarTooComplex(self._too_complex(what, "memory"), param=param)
            raise InvalidGrammar(f"Invalid {what}: {client_message(reply.message)}", param=param)
        # The worker built this matcher within the budget; building it here costs as much,
        # in a thread (llguidance releases the GIL while it builds).
        prototype = await anyio.to_thread.run_sync(self._matcher, reply.text)
        compiled = CompiledGrammar(reply.text, prototype, len(reply.text) + reply.matcher_bytes)
        self._keep(key, compiled)
        return compiled

    def start(self, compiled: CompiledGrammar) -> ConstraintState:
        """A fresh matcher for one job, from :meth:`compile`'s result."""
        return ConstraintState(compiled.prototype.deep_copy(), self.tokenizer)

    def close(self) -> None:
        self._sandbox.close()

    def _matcher(self, text: str) -> LLMatcher:
        matcher = LLMatcher(self.tokenizer, text, log_level=0, limits=parser_limits())
        if matcher.is_error():
            # The worker accepted it, so this is not the grammar's fault.
            raise GenerationFailed(f"The compiled grammar failed to load: {matcher.get_error()}")
        return matcher

    def _keep(self, key: tuple[str, str], compiled: CompiledGrammar) -> None:
        limit = self.budget.cache_bytes
        if compiled.size > limit:
            return
        with self._lock:
            previous = self._cache.pop(key, None)
            if previous is not None:
                self._cached_bytes -= previous.size
            self._cache[key] = compiled
            self._cached_bytes += compiled.size
            while self._cached_bytes > limit:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.size

    def _too_complex(self, what: str, cause: str) -> str:
        if cause == "time":
            spent = f"took longer than {self.budget.timeout:g} s"
        else:
            spent = f"needed more than {self.budget.memory >> 20} MiB"
        return f"The {what} is too complex: compiling it {spent}. Simplify it."


def client_message(message: str) -> str:
    """llguidance's message as a client may read it: its first line, shortened, without
    regex internals (the whole message is logged at debug level)."""
    line = message.strip().splitlines()[0] if message.strip() else "rejected"
    if line.startswith("Unable to determine if regex is empty"):
        return "its patterns are too complex to combine."
    if len(line) > _MESSAGE_CHARS:
        line = line[:_MESSAGE_CHARS].rstrip() + "…"
    return line


def _canonical_value(grammar: Grammar, param: str) -> str:
    """The grammar's text, with JSON documents normalised so equal schemas share a cache entry."""
    if grammar.kind not in ("json_schema", "llguidance"):
        if not isinstance(grammar.value, str):
            raise InvalidGrammar(f"A {grammar.kind} grammar must be a string.", param=param)
        return grammar.value
    document: object = grammar.value
    try:
        if isinstance(document, str):
            document = json.loads(document)
        if grammar.kind == "json_schema" and isinstance(document, bool):
            # `true` accepts any JSON value, `false` nothing; llguidance wants an object.
            document = {} if document else {"not": {}}
        if not isinstance(document, Mapping):
            raise InvalidGrammar(f"The {grammar.kind} grammar must be a JSON object.", param=param)
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except json.JSONDecodeError as exc:
        raise InvalidGrammar(f"The {grammar.kind} grammar is not JSON: {exc}", param=param) from exc
    except RecursionError:
        raise InvalidGrammar(
            f"The {grammar.kind} grammar is nested too deeply.", param=param
        ) from None


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
        if not self._matcher.is_error():
            return
        reason, error = self._matcher.stop_reason(), self._matcher.get_error()
        log.debug("constraint failed (%s): %s", reason, error)
        if reason in _GRAMMAR_LIMITS or "Too many items" in error:
            # The grammar gave out (llguidance's item or fuel limits): the client's grammar.
            raise ConstraintFailed(
                "The output constraint could not be followed: the grammar is too complex to "
                "apply token by token.",
                param="grammar",
            )
        # A token the mask allowed was refused, or llguidance failed: ours.
        raise GenerationFailed(f"Constraint failed ({reason}).")


#: llguidance stop reasons that mean the grammar passed its limits while generating.
_GRAMMAR_LIMITS = frozenset({"ParserTooComplex", "LexerTooComplex"})


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
