"""What compiling grammars in budgeted worker processes costs, and what it saves.

Runs, in one process, on the default model's vocabulary:

1. a new schema compiled in process (llguidance's ``grammar_from_json_schema`` and a matcher,
   as before) against through :class:`~exloop.engine.constraints.GrammarCompiler` (a worker
   round trip, then the matcher built once here), and a cached schema (a copy of the
   prototype matcher), for a small schema, the benchmarks' strict schema and a 500-property
   one; printing the ratios;
2. the 6.7 KB pattern bomb (150 ``allOf`` patterns): in a child process under llguidance's own
   limits (lexer fuel lowered tenfold) and a 2 GiB address-space cap, how long until it fails
   and how much it held; against the compiler's refusal with its default budget.

Usage: ``python bench/grammar_budget.py [--model PATH] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

import anyio
import llama_cpp
from llguidance import LLMatcher, LLParserLimits, LLTokenizer

from exloop.engine.constraints import GrammarCompiler
from exloop.engine.default_model import default_model_path
from exloop.engine.errors import InvalidGrammar
from exloop.engine.grammar_worker import JSON_COMPILE_DEFAULTS, parser_limits
from exloop.engine.llama_model import lltokenizer
from exloop.engine.protocol import Grammar

if __package__:  # python -m bench.grammar_budget
    from .workloads import PEOPLE_SCHEMA
else:  # python bench/grammar_budget.py
    from workloads import PEOPLE_SCHEMA

BOMB = {
    "type": "object",
    "properties": {
        "x": {"allOf": [{"type": "string", "pattern": f"^.*{i}.*$"} for i in range(150)]}
    },
}


def schemas() -> dict[str, dict[str, Any]]:
    wide = {f"field_{i}": {"type": "string"} for i in range(500)}
    return {
        "small": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        "strict people": PEOPLE_SCHEMA,
        "500 properties": {"type": "object", "properties": wide, "required": list(wide)},
    }


def in_process(tokenizer: LLTokenizer, schema: dict[str, Any]) -> float:
    started = time.perf_counter()
    text = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_COMPILE_DEFAULTS)
    matcher = LLMatcher(tokenizer, text, log_level=0, limits=parser_limits())
    assert not matcher.is_error()
    return time.perf_counter() - started


async def compare(tokenizer: LLTokenizer, rounds: int) -> None:
    print("1. a new schema: in process vs. through the compile workers (best of rounds)")
    compiler = GrammarCompiler(tokenizer)
    try:
        await compiler.compile(Grammar("regex", "[a-z]"))  # the worker is started
        for name, schema in schemas().items():
            direct, budgeted, cached = [], [], []
            for n in range(rounds):
                variant = {**schema, "description": f"round {n}"}  # new to the cache
                direct.append(in_process(tokenizer, variant))
                grammar = Grammar("json_schema", variant)
                started = time.perf_counter()
                compiled = await compiler.compile(grammar)
                budgeted.append(time.perf_counter() - started)
                started = time.perf_counter()
                compiler.start(compiled)
                cached.append(time.perf_counter() - started)
            best = min(direct), min(budgeted), min(cached)
            print(
                f"   {name:15} in process {best[0] * 1e3:7.2f} ms   workers "
                f"{best[1] * 1e3:7.2f} ms ({best[1] / best[0]:5.2f}x)   cached copy "
                f"{best[2] * 1e3:6.3f} ms ({best[2] / best[0]:6.4f}x)"
            )
        print("2. the pattern bomb")
        started = time.perf_counter()
        try:
            await compiler.compile(Grammar("json_schema", BOMB))
            outcome = "compiled (unexpected)"
        except InvalidGrammar as exc:
            outcome = f"refused ({exc.message})"
        print(f"   compile workers: {outcome} after {time.perf_counter() - started:.1f} s")
    finally:
        compiler.close()


def _bomb_in_process(model: str, fuel: int, limit: int, queue: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    llm = llama_cpp.Llama(model, vocab_only=True, verbose=False)
    tokenizer = lltokenizer(llama_cpp.llama_model_get_vocab(llm.model))
    text = LLMatcher.grammar_from_json_schema(BOMB, defaults=JSON_COMPILE_DEFAULTS)
    limits = LLParserLimits(initial_lexer_fuel=fuel, verbose_errors=False)
    started = time.perf_counter()
    error = LLMatcher.validate_grammar(text, tokenizer, limits=limits)
    queue.put((time.perf_counter() - started, error[:80]))


def bomb_in_process(model: str) -> None:
    limit = 2 << 30
    for fuel in (1_000_000, 100_000):
        queue: Any = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=_bomb_in_process, args=(model, fuel, limit, queue)
        )
        started = time.perf_counter()
        child.start()
        child.join(600)
        took = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10
        outcome = f"finished: {queue.get()}" if child.exitcode == 0 else f"died ({child.exitcode})"
        print(
            f"   in process, initial_lexer_fuel {fuel:>9,}: {outcome} after {took:.1f} s "
            f"(children's peak RSS {peak} MiB, cap {limit >> 20} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = str(args.model or default_model_path())
    llm = llama_cpp.Llama(model, vocab_only=True, verbose=False)
    tokenizer = lltokenizer(llama_cpp.llama_model_get_vocab(llm.model))
    anyio.run(compare, tokenizer, args.rounds)
    bomb_in_process(model)
    llm.close()


if __name__ == "__main__":
    main()
