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
counts. Both sides batch the same way (the engine is the server's), so the ratio bare / engine
measures what HTTP, the orchestrator and SSE cost at each concurrency.

On a shared, busy machine the rounds vary by more than 2%, so the run also measures the
features' own work in process, where noise cannot hide it: the per-token hooks (the run's
meter, the metrics and the request log's telemetry), the gateway's work per streamed chunk
(one chunk per token) and per request (request id, metrics, a JSON log line per request and
per response), each against the engine's time per token measured in the same run.

Usage: ``python bench/server_overhead.py [--model PATH] [--tokens N] [--concurrency 1 16]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from exloop.engine.default_model import default_model_path
from exloop.engine.llama_cpp import LlamaCppEngine
from exloop.engine.protocol import Chat, ChatMessage, Finish, GenerationRequest
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator.telemetry import RunMeter, Telemetries
from exloop.server.gateway import ENDPOINT, Gateway
from exloop.server.logs import JsonFormatter, RunLog, fields
from exloop.server.metrics import Metrics

if __package__:  # python -m bench.server_overhead
    from .servers import exloop
    from .workloads import FREE_PROMPT, eos_token
else:  # python bench/server_overhead.py
    from servers import exloop
    from workloads import FREE_PROMPT, eos_token


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


async def scrape(url: str) -> None:
    """Read ``/metrics`` as Prometheus would between rounds."""
    async with httpx.AsyncClient(base_url=url) as client:
        (await client.get("/metrics")).raise_for_status()


def per_call(work: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``work``, the best of three batches."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        best = min(best, (time.perf_counter() - started) / calls)
    return best


async def gateway_cost(chunks: int) -> tuple[float, float]:
    """Seconds the observing gateway adds per streamed chunk, and per request, over an ASGI
    app that streams ``chunks`` chunks."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope[ENDPOINT] = "/v1/responses"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/v1/responses", "headers": []}
    gateway = Gateway(metrics=Metrics())
    gateway.open(app)

    async def timed(target: Any, requests: int) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await target(dict(scope), receive, send)
        return (time.perf_counter() - started) / requests

    logging.getLogger("exloop.server").setLevel(logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        bare = min([await timed(app, 50) for _ in range(3)])
        observed = min([await timed(gateway, 50) for _ in range(3)])
        single = min([await timed(gateway, 2000) for _ in range(1)])
        plain_single = min([await timed(app, 2000) for _ in range(1)])
    finally:
        logging.getLogger().removeHandler(handler)
    per_request = max(0.0, single - plain_single)
    per_chunk = max(0.0, (observed - bare - per_request) / chunks)
    return per_chunk, per_request


def hook_cost() -> tuple[float, float]:
    """Seconds per output token of the orchestrator's hooks into metrics and the run log, and
    seconds per response of the "response finished" JSON line."""
    metrics, run_log = Metrics(), RunLog()
    meter = RunMeter(Telemetries(metrics, run_log))
    meter.tokens(1)
    per_token = per_call(lambda: meter.tokens(1), 100_000)
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "exloop.server", logging.INFO, __file__, 1, "response finished", None, None
    )
    record.__dict__.update(
        fields(
            response_id="resp_x",
            status="completed",
            input_tokens=31,
            output_tokens=128,
            cached_tokens=0,
            seconds=1.0,
        )
    )
    per_line = per_call(lambda: formatter.format(record), 20_000)
    return per_token, per_line


async def rate(run: Awaitable[tuple[int, float]]) -> float:
    tokens, seconds = await run
    return tokens / seconds


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
        lambda: exloop(model, "--store", "memory", "--no-observability", "--log-level", "warning")
    )
    observed = await anyio.to_thread.run_sync(
        lambda: exloop(model, "--store", "memory", "--log-format", "json", "--log-level", "info")
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
        token_seconds = 1 / direct
        per_token, per_line = hook_cost()
        per_chunk, per_request = await gateway_cost(args.tokens)
        per_response = per_request + per_line
        share = (per_token + per_chunk + per_response / args.tokens) / token_seconds
        print(
            f"\nthe features' own work, in process, against {token_seconds * 1e3:.1f} ms per token:"
        )
        hooks, chunk = per_token * 1e6, per_chunk * 1e6
        print(f"  per token: hooks {hooks:.2f} us, gateway per chunk {chunk:.2f} us")
        print(
            f"  per request: gateway with its log line {per_request * 1e6:.1f} us, "
            f"response log line {per_line * 1e6:.1f} us"
        )
        print(f"  cost at {args.tokens} tokens per stream: {share:.3%} of streamed tokens/s")
    finally:
        bare.stop()
        observed.stop()
        await engine.aclose()


if __name__ == "__main__":
    anyio.run(main)
