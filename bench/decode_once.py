"""One timed greedy decode in a process of its own, for benchmarks that compare decodes.

Two llama.cpp contexts (and their thread teams) in one process slowed whichever decoded
second by up to a quarter, which no user setup has; so benchmarks run each decode they
compare as this script, in a fresh process, and read back ``tokens seconds``:

* ``direct MODEL TOKENS THREADS PROMPT``: llama-cpp-python's ``create_completion`` on an
  already templated prompt, end of text banned. It imports llama-cpp-python alone, so another
  environment's Python can run it (``bench/engine_overhead.py --compare-build``).
* ``engine MODEL TOKENS THREADS PROMPT EOS``: exloop's engine on a user message, from
  submission to its Finish (:func:`engine_round`), ``EOS`` banned; ``THREADS`` may be
  ``default`` (:mod:`exloop.engine.threads`).
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exloop.engine.llama_cpp import LlamaCppEngine
    from exloop.engine.protocol import GenerationRequest

#: One timed round: (tokens generated, seconds).
Round = tuple[int, float]


async def engine_round(engine: LlamaCppEngine, request: GenerationRequest) -> Round:
    """One job, timed from submission to its Finish event."""
    from exloop.engine.protocol import Finish

    start = time.perf_counter()
    tokens = 0
    async for event in (await engine.submit(request)).events():
        if isinstance(event, Finish):
            tokens = event.usage.completion_tokens
    return tokens, time.perf_counter() - start


def direct(model: str, tokens: int, threads: int, prompt: str) -> Round:
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=2048, n_threads=threads, verbose=False)
    bias = {llm.token_eos(): float("-inf")}
    start = time.perf_counter()
    stream = llm.create_completion(
        prompt, max_tokens=tokens, temperature=0.0, stream=True, logit_bias=bias
    )
    count = sum(1 for chunk in stream if chunk["choices"][0]["finish_reason"] is None)  # type: ignore[index]
    return count, time.perf_counter() - start


def engine(model: str, tokens: int, threads: str, prompt: str, eos: int) -> Round:
    import anyio

    from exloop.engine.llama_cpp import LlamaCppEngine
    from exloop.engine.protocol import Chat, ChatMessage, GenerationRequest
    from exloop.engine.sampling import SamplingParams

    async def main() -> Round:
        n_threads = None if threads == "default" else int(threads)
        loaded = LlamaCppEngine(model, n_ctx=2048, n_threads=n_threads)
        request = GenerationRequest(
            Chat((ChatMessage("user", prompt),)),
            SamplingParams(temperature=0.0, max_tokens=tokens, logit_bias={eos: -100.0}),
        )
        try:
            return await engine_round(loaded, request)
        finally:
            await loaded.aclose()

    return anyio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    one = modes.add_parser("direct", help="through llama-cpp-python alone")
    other = modes.add_parser("engine", help="through exloop's engine")
    for mode in (one, other):
        mode.add_argument("model")
        mode.add_argument("tokens", type=int)
    one.add_argument("threads", type=int)
    other.add_argument("threads", help="a count, or 'default'")
    for mode in (one, other):
        mode.add_argument("prompt")
    other.add_argument("eos", type=int)
    args = parser.parse_args()
    if args.mode == "direct":
        result = direct(args.model, args.tokens, args.threads, args.prompt)
    else:
        result = engine(args.model, args.tokens, args.threads, args.prompt, args.eos)
    print(*result)


if __name__ == "__main__":
    main()
