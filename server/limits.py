"""Every limit on what one request may make the server do, in one place.

Each field of :class:`Limits` is an ``exloop serve`` flag (``max_body_bytes`` ↔
``--max-body-bytes`` ↔ ``EXLOOP_MAX_BODY_BYTES``) with the default below and the help its
annotation carries; the README's "Limits" table lists them. A request past a limit is refused
with a 4xx in OpenAI's error shape naming the field: 413 for the body, 400 for the rest.
Limits that follow from the model (``logit_bias`` ids within the vocabulary,
``dry_allowed_length`` within the context, ``top_k`` within a C ``int``) are the engine's
checks and need no flag.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Annotated, get_type_hints

from exloop.engine.grammar_sandbox import CompileBudget

_MIB = 1 << 20
_COMPILE = CompileBudget()


@dataclass(frozen=True, slots=True)
class Help:
    """A limit's flag help and metavar."""

    text: str
    metavar: str = "N"


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits; the defaults suit a public endpoint."""

    max_body_bytes: Annotated[int, Help("request body size (413 past it)", "BYTES")] = 16 * _MIB
    max_json_depth: Annotated[int, Help("nesting of arrays and objects in a body")] = 256
    max_schema_depth: Annotated[int, Help("nesting of one JSON schema")] = 32
    max_schema_size: Annotated[int, Help("JSON values in a request's schemas, together")] = 20_000
    max_enum_values: Annotated[int, Help("values in one enum of a schema")] = 1_000
    max_pattern_repeat: Annotated[int, Help("n, m of a {n,m} repetition in a pattern")] = 1_000
    max_tools: Annotated[int, Help("tools in one request (a namespace's tools counted)")] = 128
    max_grammar_chars: Annotated[int, Help("characters in one custom tool's grammar")] = 65_536
    max_description_chars: Annotated[
        int, Help("characters in one tool's or namespace's description")
    ] = 16_384
    max_stop_sequences: Annotated[int, Help("stop sequences in one request")] = 16
    max_stop_length: Annotated[int, Help("characters in one stop sequence")] = 256
    max_dry_breakers: Annotated[int, Help("dry_sequence_breakers in one request")] = 8
    max_dry_breaker_length: Annotated[int, Help("characters in one DRY breaker")] = 40
    max_logit_bias: Annotated[int, Help("logit_bias entries in one request")] = 1_024
    grammar_timeout: Annotated[
        float, Help("seconds compiling one request's grammars may take", "SECONDS")
    ] = _COMPILE.timeout
    grammar_memory: Annotated[int, Help("memory compiling one grammar may take", "BYTES")] = (
        _COMPILE.memory
    )
    grammar_cache_bytes: Annotated[int, Help("compiled grammars kept for reuse", "BYTES")] = (
        _COMPILE.cache_bytes
    )
    grammar_workers: Annotated[int, Help("processes compiling grammars at once")] = _COMPILE.workers

    @property
    def compile_budget(self) -> CompileBudget:
        """The engine's share: what compiling one grammar may cost."""
        return CompileBudget(
            timeout=self.grammar_timeout,
            memory=self.grammar_memory,
            cache_bytes=self.grammar_cache_bytes,
            workers=self.grammar_workers,
        )


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def limit_help() -> dict[str, tuple[type, Help]]:
    """Each limit's value type and help, by field name."""
    hints = get_type_hints(Limits, include_extras=True)
    return {
        limit.name: (hints[limit.name].__origin__, hints[limit.name].__metadata__[0])
        for limit in fields(Limits)
    }


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`Limits` field, each with its environment variable."""
    group = parser.add_argument_group(
        "limits", "what one request may make the server do; past them it answers a 4xx"
    )
    for limit in fields(Limits):
        kind, help = limit_help()[limit.name]
        convert = positive_float if kind is float else positive_int
        env = f"EXLOOP_{limit.name.upper()}"
        group.add_argument(
            flag_name(limit.name),
            dest=limit.name,
            type=convert,
            default=os.environ.get(env, limit.default),
            metavar=help.metavar,
            help=f"{help.text} ({env})",
        )


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{limit.name: getattr(args, limit.name) for limit in fields(Limits)})


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
