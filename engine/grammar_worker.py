"""The grammar compile worker: a child process that turns one grammar after another into
llguidance's grammar text, under an address-space limit.

llguidance's own limits (:func:`parser_limits`) bound parser and lexer work, but not all of
its memory: intersecting the patterns of a large ``allOf`` grows without bound (150 patterns
passed 3 GB in 40 s here, whatever the lexer fuel). So compiles run in this process, whose
``RLIMIT_AS`` makes such a grammar fail alone: Rust aborts on the failed allocation, the
parent sees the worker die and answers "too complex". The parent also kills a worker that
passes its deadline. See :mod:`.grammar_sandbox` for the parent's side.

Protocol, over stdin/stdout: frames of a 4-byte big-endian length and a msgpack message. The
parent sends :class:`Setup` once (the vocabulary, whose token trie the lexer is built over)
and the worker answers :class:`Ready`; then each :class:`CompileRequest` gets one
:class:`Compiled` or :class:`Rejected`.

Run as ``python -m exloop.engine.grammar_worker``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import struct
import sys
from typing import IO, TYPE_CHECKING, TypeAlias

import msgspec
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

#: JSON output without free whitespace: a small model given ``[ \t\n]*`` between tokens can
#: spin on whitespace until it runs out of tokens.
JSON_COMPILE_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}

_LENGTH = struct.Struct(">I")
_MESSAGE_LIMIT = 1 << 30


def parser_limits() -> LLParserLimits:
    """llguidance's limits for every matcher: its defaults for parser and lexer work, and
    errors without parser state or grammar text (those are logged, never answered)."""
    return LLParserLimits(verbose_errors=False)


class Setup(msgspec.Struct, tag=True, frozen=True):
    """The tokenizer, as llguidance sees it, and the worker's memory budget."""

    #: Each token's bytes; special tokens carry llguidance's ``0xff`` prefix.
    tokens: list[bytes]
    eos_tokens: list[int]
    #: Bytes of address space the worker may take beyond what it holds once set up.
    memory_limit: int


class Ready(msgspec.Struct, tag=True, frozen=True):
    pass


class CompileRequest(msgspec.Struct, tag=True, frozen=True):
    #: ``regex``, ``lark``, ``json_schema`` (JSON text) or ``llguidance`` (grammar JSON text).
    kind: str
    value: str


class Compiled(msgspec.Struct, tag=True, frozen=True):
    text: str
    #: Heap bytes a matcher of this grammar held when built (0 where it cannot be measured).
    matcher_bytes: int


class Rejected(msgspec.Struct, tag=True, frozen=True):
    #: llguidance's message (the parent shortens it for clients and logs it whole).
    message: str
    #: The grammar ran out of memory, rather than being wrong.
    too_complex: bool = False


Message: TypeAlias = Setup | Ready | CompileRequest | Compiled | Rejected

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def write_frame(stream: IO[bytes], message: Message) -> None:
    payload = _encoder.encode(message)
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Message | None:
    """The next message, or ``None`` at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > _MESSAGE_LIMIT:
        raise ValueError(f"frame of {length} bytes")
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return _decoder.decode(payload)


def grammar_text(kind: str, value: str) -> str:
    """llguidance's grammar text for a grammar of ``kind``; raises ``ValueError`` for a JSON
    document llguidance cannot read."""
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    if kind == "lark":
        return LLMatcher.grammar_from_lark(value)
    if kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(value, defaults=JSON_COMPILE_DEFAULTS)
    if kind == "llguidance":
        return value
    raise ValueError(f"unknown grammar kind {kind!r}")


class _Vocabulary:
    """llguidance's ``TokenizerWrapper`` interface over token bytes.

    Compiling needs the token trie, not the model's own tokenizer: text that a matcher
    forces is tokenized greedily here, which costs about what the real tokenizer would.
    """

    def __init__(self, setup: Setup) -> None:
        self.tokens = setup.tokens
        self.eos_token_id = setup.eos_tokens[0] if setup.eos_tokens else 0
        self.bos_token_id = None
        self.special_token_ids = [i for i, t in enumerate(setup.tokens) if t.startswith(b"\xff")]
        self.is_tokenizer_wrapper = True
        self.tokenizer: LLTokenizer | None = None

    def __call__(self, text: str) -> list[int]:
        assert self.tokenizer is not None
        return self.tokenizer.greedy_tokenize(text)


def build_tokenizer(setup: Setup) -> LLTokenizer:
    vocabulary = _Vocabulary(setup)
    tokenizer = LLTokenizer(vocabulary, eos_token=setup.eos_tokens or None)  # type: ignore[arg-type]
    vocabulary.tokenizer = tokenizer
    return tokenizer


def compile_one(request: CompileRequest, tokenizer: LLTokenizer) -> Compiled | Rejected:
    try:
        text = grammar_text(request.kind, request.value)
        before = _heap_in_use()
        matcher = LLMatcher(tokenizer, text, log_level=0, limits=parser_limits())
        held = _heap_in_use() - before
        if matcher.is_error():
            return Rejected(matcher.get_error())
        return Compiled(text, max(held, 0))
    except ValueError as exc:
        return Rejected(str(exc))
    except MemoryError:
        return Rejected("out of memory", too_complex=True)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks")
        + ("fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _mallinfo2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    function = getattr(ctypes.CDLL(path), "mallinfo2", None)  # glibc 2.33 and later
    if function is not None:
        function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not had back (glibc; 0 elsewhere)."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def _limit_memory(extra: int) -> None:
    """Cap the address space at what the worker maps now plus ``extra`` bytes."""
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return  # not Linux: the parent's deadline still applies
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = mapped + extra
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    setup = read_frame(stdin)
    if not isinstance(setup, Setup):
        return 2
    tokenizer = build_tokenizer(setup)
    _limit_memory(setup.memory_limit)
    write_frame(stdout, Ready())
    while (request := read_frame(stdin)) is not None:
        if not isinstance(request, CompileRequest):
            return 2
        write_frame(stdout, compile_one(request, tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
