"""Concurrent streams on the CPU: exloop against llama.cpp's own llama-server, same GGUF.

Both servers run as subprocesses on the same model with the same threads and the same batch
size (exloop ``--threads T --parallel P --n-ctx C/P --cache-tokens C``, llama-server
``-t T -np P -c C``). In one run it prints:

1. at 1, 4 and 16 concurrent streamed Chat Completions (greedy, end of turn banned so each
   stream generates exactly ``--tokens`` tokens, a different prompt per stream), for both
   servers in alternating rounds: aggregate tokens/s, median and max time to first token, and
   the ratios exloop / llama-server (the quietest round of each side counts); then the
   tokens/s ratio round by round (each exloop round against the llama-server round right
   after it, which saw the same drift of the machine's speed) and its median;
2. one stream through exloop against llama-cpp-python called in this process
   (``create_chat_completion``, same threads), alternating;
3. 16 streams under a strict JSON schema against 16 free streams, through exloop;
4. the time to first token of a ``previous_response_id`` follow-up (its conversation is in the
   prefix cache) against the same prompt cold, both while 4 other streams run.

Goals (issue #11): aggregate tokens/s >= 1.0x llama-server's at 4 and 16 streams, max TTFT
<= 1.5x llama-server's, one stream >= 0.95x llama-cpp-python, JSON >= 0.9x free, follow-up
TTFT <= 0.3x cold. Run it alone (``flock /tmp/exloop-heavy.lock``): other work on the machine
skews the figures, though the ratios are taken side by side.

llama-server is built from the llama.cpp that llama-cpp-python's sdist vendors (outside the
repository; ``--llama-server`` or ``$LLAMA_SERVER`` points at it)::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /work/build
    tar xzf /work/build/llama_cpp_python-0.3.36.tar.gz -C /work/build
    cd /work/build/llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \\
      -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \\
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \\
      -DLLAMA_BUILD_EXAMPLES=OFF
    cmake --build build --target llama-server -j2      # about 20 minutes on 2 busy cores

(the instruction sets are the ones llama-cpp-python's own libggml-cpu reports on this machine,
``llama_cpp.llama_print_system_info()``; name yours).

Usage: ``python bench/cpu_concurrency.py [--model PATH] [--llama-server PATH] [--threads 2]
[--parallel 16] [--ctx 32768] [--tokens 128] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import llama_cpp
from llama_cpp.llama_types import CreateChatCompletionStreamResponse

from exloop.engine.default_model import default_model_path

if __package__:  # python -m bench.cpu_concurrency
    from .servers import Served, exloop
    from .workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA
else:  # python bench/cpu_concurrency.py
    from servers import Served, exloop
    from workloads import FREE_PROMPT, JSON_PROMPT, PEOPLE_SCHEMA

TOPICS = (
    "a lighthouse", "a mountain village", "a desert caravan", "a river barge", "an old library",
    "a night market", "a research station", "a clockmaker", "a ferry crossing", "an orchard",
    "a train station", "a snowed-in inn", "a glassblower", "a harbour festival", "a beekeeper",
    "a radio operator",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stream:
    """One streamed request: seconds to its first text, tokens, seconds in all."""

    ttft: float
    tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Round:
    streams: list[Stream]
    seconds: float

    @property
    def rate(self) -> float:
        return sum(s.tokens for s in self.streams) / self.seconds

    @property
    def median_ttft(self) -> float:
        return statistics.median(s.ttft for s in self.streams)

    @property
    def max_ttft(self) -> float:
        return max(s.ttft for s in self.streams)


async def chat_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Stream:
    """POST a streamed Chat Completion and read it to the end."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    return Stream(first if first is not None else seconds, tokens or chunks, seconds)


async def concurrently(bodies: list[dict[str, Any]], url: str) -> Round:
    """All ``bodies`` at once against ``url``."""
    results: list[Stream] = []
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            results.append(await chat_stream(client, body))

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for body in bodies:
                group.start_soon(one, body)
        return Round(results, time.perf_counter() - started)


def free_bodies(n: int, tokens: int, ban: dict[str, float], salt: str) -> list[dict[str, Any]]:
    """``n`` greedy story requests, each its own prompt (``salt`` keeps rounds apart)."""
    return [
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": f"{FREE_PROMPT} Set it in {TOPICS[i % len(TOPICS)]} ({salt}{i}).",
                }
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": tokens,
            "logit_bias": ban,
        }
        for i in range(n)
    ]


def json_bodies(n: int, tokens: int, ban: dict[str, float] | None) -> list[dict[str, Any]]:
    """``n`` requests for the JSON prompt: under the strict schema, or free (``ban`` set)."""
    bodies = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": "m",
            "messages": [{"role": "user", "content": f"{JSON_PROMPT} Batch {i}."}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": tokens,
        }
        if ban is None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "people", "schema": PEOPLE_SCHEMA, "strict": True},
            }
        else:
            body["logit_bias"] = ban
        bodies.append(body)
    return bodies


def end_of_turn_ban(model: Path) -> dict[str, float]:
    """A logit bias banning every end-of-generation token of the model's vocabulary."""
    vocab_model = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(vocab_model.model)
        eog = [t for t in range(vocab_model.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        vocab_model.close()
    return {str(t): -100.0 for t in eog}


def llama_server(binary: str, model: Path, threads: int, parallel: int, ctx: int) -> Served:
    command = [binary, "-m", str(model), "-t", str(threads), "-np", str(parallel), "-c", str(ctx)]
    return Served([*command, "--log-disable", "--no-webui"])


def best(rounds: list[Round]) -> Round:
    """The quietest round (highest aggregate rate)."""
    return max(rounds, key=lambda r: r.rate)


async def compare_servers(
    ours: Served, theirs: Served, args: argparse.Namespace, ban: dict[str, float]
) -> None:
    print(f"\n1. {args.tokens} greedy tokens per stream, quietest of {args.rounds} rounds")
    header = (
        f"{'streams':>7} | {'server':<12} {'tok/s':>7} {'TTFT med':>9} {'TTFT max':>9} |"
        f" {'tok/s ratio':>11} {'max TTFT ratio':>14}"
    )
    print(header)
    for n in args.streams:
        results: dict[str, list[Round]] = {"exloop": [], "llama-server": []}
        for r in range(args.rounds):
            for name, server in (("exloop", ours), ("llama-server", theirs)):
                bodies = free_bodies(n, args.tokens, ban, salt=f"r{r}-")
                results[name].append(await concurrently(bodies, server.url))
        a, b = best(results["exloop"]), best(results["llama-server"])
        for name, x in (("exloop", a), ("llama-server", b)):
            print(
                f"{n:>7} | {name:<12} {x.rate:>7.1f} {x.median_ttft:>8.2f}s {x.max_ttft:>8.2f}s |",
                end="",
            )
            if name == "exloop":
                print(f" {a.rate / b.rate:>11.2f} {a.max_ttft / b.max_ttft:>14.2f}")
            else:
                print()
        # Each exloop round against the llama-server round right after it: the machine's
        # speed drifts over minutes, and neighbouring rounds see the same drift.
        paired = [
            ours_round.rate / their_round.rate
            for ours_round, their_round in zip(
                results["exloop"], results["llama-server"], strict=True
            )
        ]
        shown = " ".join(f"{ratio:.2f}" for ratio in paired)
        median = statistics.median(paired)
        print(f"{'':>7} | tok/s ratio round by round: {shown} (median {median:.2f})")


def direct_stream(llm: llama_cpp.Llama, tokens: int, ban: dict[str, float]) -> float:
    """Tokens/s of one greedy stream through llama-cpp-python itself."""
    started = time.perf_counter()
    count = 0
    stream = llm.create_chat_completion(
        messages=[{"role": "user", "content": f"{FREE_PROMPT} Set it in a lighthouse (direct)."}],
        max_tokens=tokens,
        temperature=0.0,
        stream=True,
        logit_bias={int(t): float("-inf") for t in ban},
    )
    for chunk in cast(Iterator[CreateChatCompletionStreamResponse], stream):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            count += 1
    return count / (time.perf_counter() - started)


async def compare_direct(
    ours: Served, model: Path, args: argparse.Namespace, ban: dict[str, float]
) -> None:
    llm = llama_cpp.Llama(
        str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    try:
        direct, served = [], []
        for r in range(max(2, args.rounds)):
            direct.append(await anyio.to_thread.run_sync(direct_stream, llm, args.tokens, ban))
            one = await concurrently(free_bodies(1, args.tokens, ban, f"d{r}-"), ours.url)
            served.append(one.rate)
    finally:
        llm.close()
    ratio = max(served) / max(direct)
    print(f"\n2. one stream, best of {len(direct)}")
    print(f"   llama-cpp-python direct {max(direct):7.1f} tok/s")
    print(f"   exloop server           {max(served):7.1f} tok/s   ratio {ratio:.2f}")


async def compare_json(ours: Served, args: argparse.Namespace, ban: dict[str, float]) -> None:
    free, strict = [], []
    for _ in range(args.rounds):
        free.append(await concurrently(json_bodies(16, args.tokens, ban), ours.url))
        strict.append(await concurrently(json_bodies(16, args.tokens, None), ours.url))
    a, b = best(strict), best(free)
    print(f"\n3. 16 streams through exloop, quietest of {args.rounds}")
    print(f"   free                    {b.rate:7.1f} tok/s")
    print(f"   strict JSON schema      {a.rate:7.1f} tok/s   ratio {a.rate / b.rate:.2f}")


async def responses_ttft(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    """Seconds to the first output text delta of a streamed Responses request."""
    started = time.perf_counter()
    async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"response.output_text.delta"' in line:
                return time.perf_counter() - started
    raise RuntimeError("the response streamed no text")


async def compare_follow_up(ours: Served, args: argparse.Namespace, ban: dict[str, float]) -> None:
    """TTFT of a cached conversation's next turn against the same prompt cold, with 4 other
    streams running all along."""
    document = " ".join(
        f"Entry {i}: the {TOPICS[i % len(TOPICS)]} logbook records {i * 7 % 13} visitors."
        for i in range(90)
    )
    question = "Which entry records the most visitors?"
    follow_up = "And which one records the fewest?"
    follow, cold = [], []
    async with httpx.AsyncClient(base_url=ours.url, timeout=900) as client:
        stop_background = anyio.Event()

        async def background(i: int) -> None:
            while not stop_background.is_set():
                bodies = free_bodies(1, 256, ban, salt=f"bg{i}-{uuid.uuid4().hex[:6]}-")
                await chat_stream(client, bodies[0])

        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(background, i)
            for _ in range(args.rounds + 1):
                nonce = uuid.uuid4().hex
                first = (
                    await client.post(
                        "/v1/responses",
                        json={
                            "input": f"[{nonce}] {document}\n\n{question}",
                            "temperature": 0,
                            "max_output_tokens": 16,
                        },
                    )
                ).json()
                follow.append(
                    await responses_ttft(
                        client,
                        {
                            "input": follow_up,
                            "previous_response_id": first["id"],
                            "temperature": 0,
                            "max_output_tokens": 8,
                        },
                    )
                )
                answer = "".join(
                    part.get("text", "")
                    for item in first["output"]
                    if item["type"] == "message"
                    for part in item["content"]
                )
                conversation = [
                    {"role": "user", "content": f"[{uuid.uuid4().hex}] {document}\n\n{question}"},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": follow_up},
                ]
                cold.append(
                    await responses_ttft(
                        client, {"input": conversation, "temperature": 0, "max_output_tokens": 8}
                    )
                )
            stop_background.set()
            group.cancel_scope.cancel()
    a, b = statistics.median(follow[1:]), statistics.median(cold[1:])
    print(f"\n4. time to first token while 4 streams run (median of {len(follow) - 1})")
    print(f"   cold prompt             {b:7.2f} s")
    print(f"   cached follow-up        {a:7.2f} s   ratio {a / b:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", "llama-server"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=32768, help="KV cache tokens, all slots")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds per side; the quietest counts"
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--parts", type=int, nargs="+", default=[1, 2, 3, 4], help="which comparisons to run"
    )
    args = parser.parse_args()
    model = args.model or await anyio.to_thread.run_sync(default_model_path)
    ban = end_of_turn_ban(model)
    # A memory store: the benchmark's responses do not belong in the user's default store.
    flags = ["--store", "memory", "--threads", str(args.threads), "--parallel", str(args.parallel)]
    flags += ["--n-ctx", str(args.ctx // args.parallel), "--cache-tokens", str(args.ctx)]
    print(
        f"model {model.name}; {args.threads} threads, {args.parallel} parallel sequences, "
        f"{args.ctx} KV tokens on both servers"
    )
    start: list[Callable[[], Served]] = [
        lambda: exloop(model, *flags, "--log-level", "warning"),
        lambda: llama_server(args.llama_server, model, args.threads, args.parallel, args.ctx),
    ]
    ours = await anyio.to_thread.run_sync(start[0])
    try:
        if 1 in args.parts:
            theirs = await anyio.to_thread.run_sync(start[1])
            try:
                await compare_servers(ours, theirs, args, ban)
            finally:
                theirs.stop()
        steps: dict[int, Callable[[], Awaitable[None]]] = {
            2: lambda: compare_direct(ours, model, args, ban),
            3: lambda: compare_json(ours, args, ban),
            4: lambda: compare_follow_up(ours, args, ban),
        }
        for part, step in steps.items():
            if part in args.parts:
                await step()
    finally:
        ours.stop()


if __name__ == "__main__":
    anyio.run(main)
