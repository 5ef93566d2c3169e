"""What the response store costs: streamed tokens/s per store, and GET latency when full.

In one run, on the default model (or ``--model``):

1. **Full stores.** A SQLite file and a Redis (a ``redis-server`` started here on loopback)
   are filled with ``--responses`` finished responses (default 100,000: a short answer with
   its event log each), written through the stores' own batch API, and GET's store work
   (load, decode, the response object as JSON) is timed in process on random ids: p50 and
   p99, with the in-memory store filled alike beside them.
2. **Streaming.** Three servers run side by side: ``--store memory``, and SQLite and Redis
   on those full stores. Rounds alternate between them (so machine noise hits all alike), each
   ``N`` concurrent stored, streamed responses of exactly ``--tokens`` tokens (greedy, end of
   turn banned); the best round of each counts. It prints tokens/s and the ratio to memory
   (goal >= 0.97), and GET p50/p99 over HTTP on each server.

Usage: ``python bench/store.py [--model PATH] [--tokens N] [--concurrency 1 8]
[--responses N]``. Needs ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio
import httpx
import msgspec

from exloop.engine.default_model import default_model_path
from exloop.orchestrator.codec import RecordCodec
from exloop.orchestrator.items import InputText, Message
from exloop.orchestrator.memory_store import MemoryStore
from exloop.orchestrator.output import OutputWriter
from exloop.orchestrator.record import ResponseRecord
from exloop.orchestrator.redis_store import RedisStore
from exloop.orchestrator.sealing import KEY_BYTES, Sealer
from exloop.orchestrator.spec import RunSpec
from exloop.orchestrator.sqlite_store import SqliteStore
from exloop.orchestrator.state import Transition
from exloop.orchestrator.store import RecordWrite, ResponseStore, Retention

if __package__:  # python -m bench.store
    from .server_overhead import server_round
    from .servers import Served, exloop
    from .workloads import eos_token
else:  # python bench/store.py
    from server_overhead import server_round
    from servers import Served, exloop
    from workloads import eos_token

#: Roomy enough that filling never evicts.
RETENTION = Retention(max_responses=10_000_000, max_bytes=1 << 40)
BATCH = 500


class RedisProcess:
    """redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def sample_record(response_id: str) -> ResponseRecord:
    """A finished response like a short chat turn: a question, a ten-delta answer."""
    question = Message(role="user", content=[InputText("What is the capital of France?")])
    spec = RunSpec(input=(question,), model="default")
    record = ResponseRecord(id=response_id, spec=spec, context=(), input_items=(question,))
    record.announce()
    record.move(Transition.START)
    record.emit_in_progress()
    writer = OutputWriter(record, Sealer(os.urandom(KEY_BYTES)))
    for word in ("The ", "capital ", "of ", "France ", "is ", "Paris, ", "on ", "the ", "Seine."):
        writer.text(word)
    writer.close_message()
    record.complete()
    return record


async def fill(store: ResponseStore, ids: list[str]) -> float:
    """Write a finished response under every id; returns the seconds it took."""
    codec = RecordCodec()
    template = sample_record(ids[0])
    events = tuple(codec.encode_event(e) for e in template.log.since(0))
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        writes = []
        for response_id in ids[start : start + BATCH]:
            template.id = response_id
            state, fixed = codec.encode(template), codec.encode_fixed(template)
            writes.append(RecordWrite(response_id, state, fixed, events, 0, True))
        await store.save(writes)
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def store_get_latency(store: ResponseStore, ids: list[str], n: int) -> tuple[float, float]:
    """What GET asks of the store, in process: load, decode, the response as JSON."""
    codec, encoder = RecordCodec(), msgspec.json.Encoder()
    samples = []
    for response_id in random.sample(ids, n):
        started = time.perf_counter()
        stored = await store.load(response_id)
        assert stored is not None
        record = codec.decode(stored.record, stored.fixed, events=stored.events)
        encoder.encode(record.snapshot())
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def http_get_latency(url: str, ids: list[str], n: int) -> tuple[float, float]:
    samples = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for response_id in random.sample(ids, n):
            started = time.perf_counter()
            answer = await client.get(f"/v1/responses/{response_id}")
            samples.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return percentiles(samples)


async def rate(run: Awaitable[tuple[int, float]]) -> float:
    tokens, seconds = await run
    return tokens / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--responses", type=int, default=100_000)
    parser.add_argument("--gets", type=int, default=2000)
    args = parser.parse_args()
    model = args.model or default_model_path()
    eos = eos_token(model)
    workdir = Path(tempfile.mkdtemp(prefix="exloop-bench-store-"))
    redis = RedisProcess()
    servers: dict[str, Served] = {}
    try:
        ids = [f"resp_bench{n:012d}" for n in range(args.responses)]
        sqlite_url = f"sqlite:{workdir / 'responses.db'}"
        stores: dict[str, ResponseStore] = {
            "memory": MemoryStore(RETENTION),
            "sqlite": SqliteStore(workdir / "responses.db", RETENTION),
            "redis": RedisStore(redis.url, RETENTION),
        }
        print(f"{args.responses} stored responses; GET's store work in process, {args.gets} ids")
        print(f"{'store':>8} {'fill s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, store in stores.items():
            async with store:
                seconds = await fill(store, ids)
                p50, p99 = await store_get_latency(store, ids, args.gets)
            print(f"{name:>8} {seconds:>8.1f} {p50:>8.3f} {p99:>8.3f}")

        size = ("--store-max-responses", str(args.responses + 10_000))
        servers["memory"] = exloop(model, "--store", "memory")
        servers["sqlite"] = exloop(model, "--store", sqlite_url, *size)
        servers["redis"] = exloop(model, "--store", redis.url, *size)
        print(f"\nGET over HTTP, {args.gets} random ids of the full stores")
        print(f"{'store':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name in ("sqlite", "redis"):
            p50, p99 = await http_get_latency(servers[name].url, ids, args.gets)
            print(f"{name:>8} {p50:>8.3f} {p99:>8.3f}")

        print(f"\nstored streams of {args.tokens} tokens, best of {args.rounds} rounds")
        print(f"{'streams':>8} {'memory':>9} {'sqlite':>9} {'redis':>9} {'sqlite/mem':>11} "
              f"{'redis/mem':>10}")  # fmt: skip
        for n in args.concurrency:
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    streams = server_round(server.url, n, args.tokens, eos, store=True)
                    rates[name].append(await rate(streams))
            best = {name: max(values) for name, values in rates.items()}
            print(
                f"{n:>8} {best['memory']:>9.1f} {best['sqlite']:>9.1f} {best['redis']:>9.1f} "
                f"{best['sqlite'] / best['memory']:>11.3f} {best['redis'] / best['memory']:>10.3f}"
            )
    finally:
        for server in servers.values():
            server.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(anyio.run(main))
