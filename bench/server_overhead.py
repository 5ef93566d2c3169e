"""What the HTTP server and orchestrator cost on top of the engine, in streamed tokens/s.

In one run, on the same model, prompt and sampling (greedy, end-of-turn banned so every
stream generates exactly ``--tokens`` tokens):

* **engine**: ``LlamaCppEngine`` called in process, ``N`` jobs submitted at once;
* **server**: ``exloop serve`` as a subprocess on 127.0.0.1, ``N`` concurrent streamed
  ``POST /v1/responses`` read to their last event over HTTP.

It prints tokens/s of each and the ratio server / engine at each concurrency (default 1 and
16; goal >= 0.95). Rounds alternate between the two so machine noise hits both alike; the best
round of each counts. Both sides batch the same way (the engine is the server's), so the ratio
measures what HTTP, the orchestrator and SSE cost at each concurrency.

Usage: ``python bench/server_overhead.py [--model PATH] [--tokens N] [--concurrency 1 16]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio
import httpx
import llama_cpp

from exloop.engine.default_model import default_model_path
from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.protocol import Chat, ChatMessage, Finish, GenerationRequest
from exloop.engine.sampling import SamplingParams

if __package__:  # python -m bench.server_overhead
    from .servers import exloop
    from .workloads import FREE_PROMPT
else:  # python bench/server_overhead.py
    from servers import exloop
    from workloads import FREE_PROMPT


async def engine_round(engine: LlamaCppEngine, n: int, tokens: int, eos: int) -> tuple[int, float]:
    request = GenerationRequest(
        prompt=Chat((ChatMessage(role="user", content=FREE_PROMPT),)),
        sampling=SamplingParams(temperature=0.0, max_tokens=tokens, logit_bias={eos: -100.0}),
    )
    total = 0

    async def one() -> None:
        nonlocal total
        async for event in (await engine.submit(request)).events():
            if isinstance(event, Finish):
                total += event.usage.completion_tokens

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return total, time.perf_counter() - started


async def server_round(
    url: str, n: int, tokens: int, eos: int, *, store: bool = False
) -> tuple[int, float]:
    body = {
        "input": FREE_PROMPT,
        "stream": True,
        "store": store,
        "temperature": 0,
        "max_output_tokens": tokens,
        "logit_bias": {str(eos): -100},
    }
    total = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal total
        async with client.stream("POST", "/v1/responses", json=body) as response:
            last = None
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    last = line
        assert last is not None
        usage = json.loads(last.removeprefix("data: "))["response"]["usage"]
        total += usage["output_tokens"]

    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)
    ) as client:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one, client)
        return total, time.perf_counter() - started


async def rate(run: Awaitable[tuple[int, float]]) -> float:
    tokens, seconds = await run
    return tokens / seconds


def eos_token(model: Path) -> int:
    """The end-of-turn token, read from the GGUF's vocabulary alone."""
    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        return int(vocab.token_eos())
    finally:
        vocab.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    model = args.model or default_model_path()

    eos = eos_token(model)
    engine = await anyio.to_thread.run_sync(lambda: LlamaCppEngine(model))
    server = await anyio.to_thread.run_sync(lambda: exloop(model, "--store", "memory"))
    try:
        print(f"model {model.name}, {args.tokens} tokens per stream, best of {args.rounds}")
        print(f"{'streams':>8} {'engine tok/s':>13} {'server tok/s':>13} {'ratio':>7}")
        for n in args.concurrency:
            direct_rates, served_rates = [], []
            for _ in range(args.rounds):
                # Alternate, so drifting machine load hits both sides alike.
                direct_rates.append(await rate(engine_round(engine, n, args.tokens, eos)))
                served_rates.append(await rate(server_round(server.url, n, args.tokens, eos)))
            direct, served = max(direct_rates), max(served_rates)
            print(f"{n:>8} {direct:>13.1f} {served:>13.1f} {served / direct:>7.3f}")
    finally:
        server.stop()
        await engine.aclose()


if __name__ == "__main__":
    anyio.run(main)
