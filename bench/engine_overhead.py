"""How much the llama.cpp backend costs on top of llama-cpp-python, and what a constraint costs.

Runs, on the same model and prompt:

1. tokens/s of ``LlamaCppEngine`` against ``Llama.create_completion(stream=True)`` called
   directly (both greedy, both with the same thread count), printing the ratio (goal >= 0.95);
2. tokens/s of ``LlamaCppEngine`` with a strict JSON-schema constraint against without,
   printing the ratio (goal >= 0.9);
3. tokens/s of ``LlamaCppEngine`` with the default thread count (:mod:`exloop.engine.threads`)
   beside ``--threads 1`` and ``--threads N`` (every CPU), printing default/best (goal >= 0.95);
4. with ``--compare-build PYTHON``: llama-cpp-python's direct decode in this environment
   against the same in another one (e.g. a venv holding pip's default ``-march=native``
   build), each round in a fresh subprocess, printing this/other (goal >= 0.95).

Rounds alternate between the contenders so that machine noise hits both alike (the decodes
of 1, 3 and 4 each in a fresh process); the best round of each counts. Usage:
``python bench/engine_overhead.py [--model PATH] [--tokens N]
[--compare-build OTHER_VENV/bin/python]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio

from exloop.engine.default_model import default_model_path
from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.protocol import Chat, ChatMessage, GenerationRequest, Grammar
from exloop.engine.sampling import SamplingParams
from exloop.engine.threads import default_threads

if __package__:  # python -m bench.engine_overhead
    from .decode_once import Round, engine_round
    from .workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA, eos_token
else:  # python bench/engine_overhead.py
    from decode_once import Round, engine_round
    from workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA, eos_token


async def best_of(
    rounds: int, contenders: dict[str, Callable[[], Awaitable[Round]]]
) -> dict[str, Round]:
    """Each contender's fastest round (by tokens/s), running them in alternation."""
    best: dict[str, Round] = {}
    for _ in range(rounds):
        for name, run in contenders.items():
            tokens, seconds = await run()
            if name not in best or tokens / seconds > best[name][0] / best[name][1]:
                best[name] = (tokens, seconds)
    return best


def rate(result: Round) -> float:
    return result[0] / result[1]


#: Decodes in a fresh process each (see :mod:`decode_once`).
_DECODE_ONCE = str(Path(__file__).with_name("decode_once.py"))


def _decode_in(python: str, *argv: object) -> Round:
    out = subprocess.run(
        [python, _DECODE_ONCE, *map(str, argv)], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), float(out[1])


def direct_decode_in(python: str, model: Path, tokens: int, threads: int, prompt: str) -> Round:
    """One direct llama-cpp-python decode of ``prompt`` (already templated) under ``python``."""
    return _decode_in(python, "direct", model, tokens, threads, prompt)


def engine_decode_in(model: Path, tokens: int, threads: int | None, eos: int) -> Round:
    """One exloop engine decode of the free prompt, with ``threads`` (None: the default)."""
    count = "default" if threads is None else threads
    return _decode_in(sys.executable, "engine", model, tokens, count, FREE_PROMPT, eos)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument(
        "--compare-build",
        metavar="PYTHON",
        default=None,
        help="an interpreter whose llama-cpp-python build to compare with this one's",
    )
    args = parser.parse_args()
    model = args.model or await anyio.to_thread.run_sync(default_model_path)
    # The same count on both sides (llama-cpp-python's own default differs from exloop's).
    threads = args.threads or default_threads().threads

    eos = await anyio.to_thread.run_sync(lambda: eos_token(model))

    def in_subprocess(run: Callable[[], Round]) -> Callable[[], Awaitable[Round]]:
        return partial(anyio.to_thread.run_sync, run)

    engine = await anyio.to_thread.run_sync(
        lambda: LlamaCppEngine(model, n_ctx=2048, n_threads=threads)
    )
    try:
        # min_tokens is not a field: a fixed budget with EOS banned keeps both sides running
        # to exactly --tokens.
        prompt_text = engine.render(Chat((ChatMessage("user", FREE_PROMPT),)))
        overhead = await best_of(
            args.rounds,
            {
                "llama-cpp-python": in_subprocess(
                    partial(
                        direct_decode_in, sys.executable, model, args.tokens, threads, prompt_text
                    )
                ),
                "exloop": in_subprocess(
                    partial(engine_decode_in, model, args.tokens, threads, eos)
                ),
            },
        )

        json_chat = Chat((ChatMessage("user", JSON_PROMPT),))
        free = GenerationRequest(json_chat, SamplingParams(temperature=0.0, max_tokens=args.tokens))
        constrained = GenerationRequest(
            json_chat,
            SamplingParams(temperature=0.0, max_tokens=args.tokens),
            Grammar("json_schema", PEOPLE_SCHEMA),
        )
        grammar = await best_of(
            args.rounds,
            {
                "unconstrained": lambda: engine_round(engine, free),
                "json_schema": lambda: engine_round(engine, constrained),
            },
        )
    finally:
        await engine.aclose()
    counts: dict[str, int | None] = {
        f"default ({default_threads().threads} threads)": None,
        "--threads 1": 1,
        f"--threads {os.cpu_count()}": os.cpu_count(),
    }
    by_threads = await best_of(
        args.rounds,
        {
            label: in_subprocess(partial(engine_decode_in, model, args.tokens, n, eos))
            for label, n in counts.items()
        },
    )
    builds: dict[str, Round] = {}
    if args.compare_build:
        builds = await best_of(
            args.rounds,
            {
                name: in_subprocess(
                    partial(direct_decode_in, python, model, args.tokens, threads, prompt_text)
                )
                for name, python in (("this", sys.executable), ("other", args.compare_build))
            },
        )

    print(f"model: {model.name}, up to {args.tokens} tokens per round, best of {args.rounds}")
    for label, result in [
        ("llama-cpp-python direct", overhead["llama-cpp-python"]),
        ("exloop LlamaCppEngine", overhead["exloop"]),
    ]:
        print(f"  {label:<24}: {rate(result):7.1f} tok/s ({result[0]} tokens)")
    ratio = rate(overhead["exloop"]) / rate(overhead["llama-cpp-python"])
    print(f"  {'ratio exloop/direct':<24}: {ratio:7.3f}")
    for label, result in [
        ("unconstrained", grammar["unconstrained"]),
        ("strict JSON schema", grammar["json_schema"]),
    ]:
        print(f"  {label:<24}: {rate(result):7.1f} tok/s ({result[0]} tokens)")
    ratio = rate(grammar["json_schema"]) / rate(grammar["unconstrained"])
    print(f"  {'ratio constrained/free':<24}: {ratio:7.3f}")
    for label, result in by_threads.items():
        print(f"  {label:<24}: {rate(result):7.1f} tok/s ({result[0]} tokens)")
    best = max(rate(r) for r in by_threads.values())
    default_label = next(iter(by_threads))
    print(f"  {'ratio default/best':<24}: {rate(by_threads[default_label]) / best:7.3f}")
    if builds:
        print(f"  {'this build, direct':<24}: {rate(builds['this']):7.1f} tok/s")
        print(f"  {args.compare_build + ', direct':<24}: {rate(builds['other']):7.1f} tok/s")
        print(
            f"  {'ratio this/other build':<24}: {rate(builds['this']) / rate(builds['other']):7.3f}"
        )


if __name__ == "__main__":
    anyio.run(main)
