"""What the HTTP server and orchestrator cost on top of the engine, in streamed tokens/s, and
what the operations features (metrics, request ids, JSON logs) cost on top of the server.

In one run, on the same model, prompt and sampling (greedy, end-of-turn banned so every
stream generates exactly ``--tokens`` tokens):

* **engine**: ``LlamaCppEngine`` called in process, ``N`` jobs submitted at once;
* **bare**: ``exloop serve`` as a subprocess on 127.0.0.1 without metrics, request ids or
  request log (a hidden baseline flag), ``N`` concurrent streamed ``POST /v1/responses`` read
  to their last event over HTTP;
* **observed**: the same server as deployed: Prometheus metrics, a request id per request,
  JSON logs at info (a line per request and per response, written to a file), with
  ``/metrics`` scraped after each round.

It prints tokens/s of each, the ratio bare / engine (goal >= 0.95) and observed / bare (goal
>= 0.98: the operations features cost at most 2%) at each concurrency (default 1 and 16).
Rounds alternate between the three so machine noise hits all alike; the best round of each
counts. The engine runs one job at a time on a CPU, so concurrency measures queueing and
fan-out cost, not batching.

Usage: ``python bench/server_overhead.py [--model PATH] [--tokens N] [--concurrency 1 16]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
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
    from .workloads import FREE_PROMPT
else:  # python bench/server_overhead.py
    from workloads import FREE_PROMPT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``exloop serve`` in a subprocess, stopped on exit; its log goes to a temporary file."""

    def __init__(self, model: Path, *flags: str) -> None:
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "exloop.server.cli",
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *flags,
        ]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


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


async def server_round(url: str, n: int, tokens: int, eos: int) -> tuple[int, float]:
    body = {
        "input": FREE_PROMPT,
        "stream": True,
        "store": False,
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


async def scrape(url: str) -> None:
    """Read ``/metrics`` as Prometheus would between rounds."""
    async with httpx.AsyncClient(base_url=url) as client:
        (await client.get("/metrics")).raise_for_status()


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
    bare = await anyio.to_thread.run_sync(
        lambda: Server(model, "--no-observability", "--log-level", "warning")
    )
    observed = await anyio.to_thread.run_sync(
        lambda: Server(model, "--log-format", "json", "--log-level", "info")
    )
    try:
        print(f"model {model.name}, {args.tokens} tokens per stream, best of {args.rounds}")
        print(
            f"{'streams':>8} {'engine tok/s':>13} {'bare tok/s':>11} {'observed tok/s':>15} "
            f"{'bare/engine':>12} {'observed/bare':>14}"
        )
        for n in args.concurrency:
            direct_rates, bare_rates, observed_rates = [], [], []
            for _ in range(args.rounds):
                # Alternate, so drifting machine load hits every side alike.
                direct_rates.append(await rate(engine_round(engine, n, args.tokens, eos)))
                bare_rates.append(await rate(server_round(bare.url, n, args.tokens, eos)))
                observed_rates.append(await rate(server_round(observed.url, n, args.tokens, eos)))
                await scrape(observed.url)
            direct, plain, full = max(direct_rates), max(bare_rates), max(observed_rates)
            print(
                f"{n:>8} {direct:>13.1f} {plain:>11.1f} {full:>15.1f} "
                f"{plain / direct:>12.3f} {full / plain:>14.3f}"
            )
    finally:
        bare.stop()
        observed.stop()
        await engine.aclose()


if __name__ == "__main__":
    anyio.run(main)
