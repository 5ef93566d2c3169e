"""What the GPU backend costs on top of ExLlamaV2, how close decoding runs to the memory bound,
and what a strict JSON-schema constraint costs. Needs CUDA and ``exloop[gpu]``.

For one model directory, in one run:

1. tokens/s of a raw ``ExLlamaV2DynamicGenerator`` at 1, 8 and 32 concurrent jobs, then of our
   HTTP server (uvicorn on loopback, streamed Chat Completions) at the same concurrency, and
   their ratio (goal >= 0.95 at every concurrency). Every stream generates exactly ``--tokens``
   tokens: the stop tokens are banned by a logit bias on both sides.
2. single-stream decode tokens/s against the memory-bandwidth bound: the bytes of the weights
   read per token (every module but the embedding table, which stays in system memory) over
   the GPU's measured device-to-device copy bandwidth.
3. tokens/s with a strict JSON-schema constraint against without, through the engine, at 1 and
   8 streams (goal >= 0.9).

The raw generator and the engine each load the model in turn (never both at once), so the
cache pages of one never masquerade as the other's. Without flash-attn, ExLlamaV2 runs one job
at a time and the concurrency rows measure queueing; the mode is printed.

Usage: ``python bench/gpu_throughput.py --model DIR [--tokens 256] [--streams 1,8,32]
[--cache-mode fp16] [--max-seq-len 4096]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from exloop.engine.backends import gpu_problem
from exloop.engine.exllamav2_vocab import ModelVocabulary, read_vocabulary
from exloop.engine.protocol import Chat, ChatMessage, Finish, GenerationRequest, Grammar
from exloop.engine.sampling import SamplingParams

if __package__:  # python -m bench.gpu_throughput
    from .workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA
else:  # python bench/gpu_throughput.py
    from workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="model directory (EXL2 or safetensors)"
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream")
    parser.add_argument("--streams", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--cache-mode", default="fp16", choices=("fp16", "q8", "q6", "q4"))
    parser.add_argument("--max-seq-len", type=int, default=4096)
    args = parser.parse_args()
    problem = gpu_problem()
    if problem is not None:
        sys.exit(f"gpu_throughput: the GPU backend cannot run here: {problem}.")
    streams = [int(s) for s in args.streams.split(",")]
    vocab = read_vocabulary(args.model)
    raw = raw_generator(args.model, vocab, args.tokens, streams, args.cache_mode, args.max_seq_len)
    anyio.run(served, args, streams, raw, vocab.stop_token_ids)


# -- 1 and 2: the raw generator -------------------------------------------------------------


def raw_generator(
    model_dir: Path,
    vocab: ModelVocabulary,
    tokens: int,
    streams: list[int],
    cache_mode: str,
    max_seq_len: int,
) -> dict[int, float]:
    import torch
    from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer
    from exllamav2 import attn as exl_attn
    from exllamav2.embedding import ExLlamaV2Embedding
    from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob

    from exloop.engine.exllamav2_backend import _CACHES, _cache_size, sampler_settings
    from exloop.engine.exllamav2_sampling import plan_sampler

    config = ExLlamaV2Config(str(model_dir))
    config.max_seq_len = max_seq_len
    paged = bool(exl_attn.has_flash_attn_with_paged) and not config.no_flash_attn
    batch = max(streams) if paged else 1  # as the engine sizes it
    model = ExLlamaV2(config)
    cache = _CACHES[cache_mode](model, max_seq_len=_cache_size(None, max_seq_len, batch), lazy=True)
    model.load_autosplit(cache, progress=True)
    tokenizer = ExLlamaV2Tokenizer(config)
    generator = ExLlamaV2DynamicGenerator(
        model=model,
        cache=cache,
        tokenizer=tokenizer,
        max_batch_size=batch,
        max_seq_len=max_seq_len,
        paged=paged,
    )
    mode = "paged (continuous batching)" if paged else "unpaged: no flash-attn, one job at a time"
    print(f"mode: {mode}")
    generator.warmup()
    # The same settings the server gives these requests: greedy, stop tokens banned.
    params = SamplingParams(temperature=0.0, logit_bias=dict.fromkeys(vocab.stop_token_ids, -100.0))
    plan = plan_sampler(params, vocab.texts)
    padded = -(-config.vocab_size // 32) * 32
    ids = tokenizer.encode(FREE_PROMPT, encode_special_tokens=True)

    def run(concurrency: int) -> tuple[float, float]:
        jobs = [
            ExLlamaV2DynamicJob(
                input_ids=ids,
                max_new_tokens=tokens,
                gen_settings=sampler_settings(plan, padded),
                stop_conditions=[],
                identifier=i,
            )
            for i in range(concurrency)
        ]
        start = time.perf_counter()
        generator.enqueue(jobs)
        decode = 0.0
        generated = 0
        while generator.num_remaining_jobs():
            for result in generator.iterate():
                if result["stage"] == "streaming" and result["eos"]:
                    generated += result["new_tokens"]
                    decode = max(decode, result["time_generate"])
        return generated / (time.perf_counter() - start), (tokens - 1) / decode if decode else 0.0

    rates: dict[int, float] = {}
    for concurrency in streams:
        rates[concurrency] = max(run(concurrency)[0] for _ in range(2))
        print(f"raw generator   {concurrency:>3} streams: {rates[concurrency]:9.1f} tok/s")

    decode_rate = max(run(1)[1] for _ in range(3))
    weight_bytes = sum(
        m.weight_footprint() for m in model.modules if not isinstance(m, ExLlamaV2Embedding)
    )
    bandwidth = copy_bandwidth(torch)
    bound = bandwidth / weight_bytes
    print(
        f"single-stream decode: {decode_rate:.1f} tok/s; bound {bound:.1f} tok/s "
        f"({weight_bytes / 2**30:.2f} GiB of weights per token at "
        f"{bandwidth / 1e9:.0f} GB/s copy bandwidth): "
        f"{decode_rate / bound:.2f} of the bound"
    )
    model.unload()
    return rates


def copy_bandwidth(torch: Any) -> float:
    """Bytes per second moved by a device-to-device copy (each byte read once, written once)."""
    size = 1 << 30
    source = torch.empty(size, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(10):
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    del source, target
    return 2 * size / best


# -- 1 and 3: our server and engine ---------------------------------------------------------


async def served(
    args: argparse.Namespace, streams: list[int], raw: dict[int, float], stop_ids: tuple[int, ...]
) -> None:
    import torch
    import uvicorn

    from exloop.engine.exllamav2_backend import ExLlamaV2Engine
    from exloop.orchestrator.service import Orchestrator
    from exloop.server.app import AppSettings, build_app

    gc.collect()  # the raw generator's cache and buffers, before the engine allocates its own
    torch.cuda.empty_cache()
    engine = await anyio.to_thread.run_sync(
        lambda: ExLlamaV2Engine.load(
            args.model,
            cache_mode=args.cache_mode,
            max_seq_len=args.max_seq_len,
            max_batch_size=max(streams),
        )
    )
    try:
        async with Orchestrator(engine, model_name="bench") as orchestrator:
            app = build_app(orchestrator, AppSettings("bench"))
            port = _free_port()
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            )
            async with anyio.create_task_group() as group:
                group.start_soon(server.serve)
                while not server.started:
                    await anyio.sleep(0.05)
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=600
                ) as client:
                    await chat_stream(client, args.tokens, stop_ids)  # warm-up
                    for concurrency in streams:
                        rate = max(
                            [
                                await concurrent(
                                    lambda: chat_stream(client, args.tokens, stop_ids), concurrency
                                )
                                for _ in range(2)
                            ]
                        )
                        print(
                            f"server (HTTP)   {concurrency:>3} streams: {rate:9.1f} tok/s "
                            f"= {rate / raw[concurrency]:.3f} of raw (goal >= 0.95)"
                        )
                server.should_exit = True
        for concurrency in (1, 8):
            free = await concurrent(
                lambda: engine_run(engine, None, args.tokens, stop_ids), concurrency
            )
            constrained = await concurrent(
                lambda: engine_run(
                    engine, Grammar("json_schema", PEOPLE_SCHEMA), args.tokens, stop_ids
                ),
                concurrency,
            )
            print(
                f"constrained     {concurrency:>3} streams: {constrained:9.1f} tok/s vs {free:.1f} "
                f"unconstrained = {constrained / free:.3f} (goal >= 0.9)"
            )
    finally:
        await engine.aclose()


async def concurrent(one: Callable[[], Awaitable[int]], concurrency: int) -> float:
    """Tokens/s of ``concurrency`` copies of ``one`` (each returns its token count)."""
    counts: list[int] = []

    async def task() -> None:
        counts.append(await one())

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(task)
    return sum(counts) / (time.perf_counter() - start)


async def chat_stream(client: httpx.AsyncClient, tokens: int, stop_ids: tuple[int, ...]) -> int:
    body = {
        "model": "bench",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": tokens,
        "logit_bias": {str(t): -100 for t in stop_ids},
        "messages": [{"role": "user", "content": FREE_PROMPT}],
    }
    usage = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
    return usage


async def engine_run(
    engine: Any, constraint: Grammar | None, tokens: int, stop_ids: tuple[int, ...]
) -> int:
    """One job; the stop tokens are banned so that the free run does not end early (the
    constrained one still ends where the schema does: there the mask leaves only them)."""
    request = GenerationRequest(
        Chat((ChatMessage("user", JSON_PROMPT),)),
        SamplingParams(
            temperature=0.7, seed=5, max_tokens=tokens, logit_bias=dict.fromkeys(stop_ids, -100.0)
        ),
        constraint,
    )
    async for event in (await engine.submit(request)).events():
        if isinstance(event, Finish):
            return event.usage.completion_tokens
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
