"""Time one web-search round, split by stage, against the loopback web fixture.

A round is what the built-in web search tool does per call: search, fetch the top 5 pages
concurrently, extract their text (worker threads), rank every chunk with BM25 and pack the
budget. The fixture serves everything from 127.0.0.1, so network time is close to zero and the
figures are our own overhead (plus the stand-in server's, which shares the CPUs).

    .venv/bin/python -m bench.web_search [--rounds 20] [--provider searxng|ddgs]

Prints the first (cold) round, the median and worst time per stage and the total, then the
same round through the ``WebResearch`` facade (which overlaps extraction with the remaining
fetches), then through the orchestrator: a whole response with ``web_search_options`` on a
scripted engine (no model time), whose forced search writes its ``web_search_call`` item and
events and whose answer is annotated with citations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import anyio

from exloop.orchestrator.items import InputText, Message
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import RunSpec, ToolPolicy, WebSearchOptions
from exloop.orchestrator.web_search import web_search_builtins
from exloop.tools.extract import ExtractedPage, extract
from exloop.tools.fetch import FetchedPage, SafeFetcher
from exloop.tools.rank import CONTEXT_BUDGETS, pack, rank_chunks, split_chunks
from exloop.tools.research import WebResearch
from exloop.tools.web_search import DdgsProvider, SearchProvider, SearchRequest, SearxngProvider
from tests.fixtures.web import WebFixture
from tests.orchestrator.scripted import ScriptedEngine, say

QUERY = "honeybee dance sourdough yeast tides moon rust borrow volcano magma"
PAGES = 5
STAGES = ("search", "fetch", "extract", "rank+pack", "total")
T = TypeVar("T")


@dataclass(frozen=True)
class Round:
    """Seconds spent per stage in one round."""

    search: float
    fetch: float
    extract: float
    rank: float

    @property
    def total(self) -> float:
        return self.search + self.fetch + self.extract + self.rank


async def _gather(jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    results: list[T | None] = [None] * len(jobs)

    async def run(index: int, job: Callable[[], Awaitable[T]]) -> None:
        results[index] = await job()

    async with anyio.create_task_group() as group:
        for index, job in enumerate(jobs):
            group.start_soon(run, index, job)
    return [r for r in results if r is not None]


async def staged_round(provider: SearchProvider, fetcher: SafeFetcher) -> Round:
    """One round with a clock between stages."""
    start = time.perf_counter()
    results = await provider.search(SearchRequest(QUERY, max_results=8))
    searched = time.perf_counter()
    urls = [r.url for r in results[:PAGES]]
    if len(urls) < PAGES:
        raise RuntimeError(f"the fixture search found only {len(urls)} pages")
    fetched: list[FetchedPage] = await _gather([partial(fetcher.fetch, url) for url in urls])
    got = time.perf_counter()
    pages: list[ExtractedPage] = await _gather([partial(extract, page) for page in fetched])
    extracted = time.perf_counter()
    chunks = [c for n, page in enumerate(pages, 1) for c in split_chunks(page.text, source=n)]
    chosen = pack(rank_chunks(QUERY, chunks), CONTEXT_BUDGETS["medium"], separator="\n\n")
    if not chosen:
        raise RuntimeError("ranking chose no passage")
    ranked = time.perf_counter()
    return Round(searched - start, got - searched, extracted - got, ranked - extracted)


async def orchestrated_rounds(research: WebResearch, rounds: int) -> list[float]:
    """Seconds per response: forced search (as the model's call), then a cited answer."""
    call = f'<tool_call>{{"name": "web_search", "arguments": {{"query": "{QUERY}"}}}}</tool_call>'
    spec = RunSpec(
        input=(Message(role="user", content=[InputText(QUERY)]),),
        model="bench",
        tools=ToolPolicy(web_search=WebSearchOptions(forced=True)),
    )
    times = []
    for _ in range(rounds):
        engine = ScriptedEngine([say(call), say("Bees dance [1] and the moon pulls tides [3].")])
        builtins = web_search_builtins(research)
        async with Orchestrator(engine, model_name="bench", builtins=builtins) as orchestrator:
            start = time.perf_counter()
            response = await (await orchestrator.create(spec)).wait()
            times.append(time.perf_counter() - start)
        if response.status != "completed" or len(response.output) != 2:
            raise RuntimeError(f"the orchestrated round ended {response.status}")
    return times


def _report(title: str, rows: list[tuple[str, list[float]]]) -> None:
    print(title)
    print(f"  {'stage':<10} {'median ms':>10} {'max ms':>10}")
    for name, values in rows:
        print(f"  {name:<10} {statistics.median(values) * 1000:>10.1f} {max(values) * 1000:>10.1f}")


async def main(rounds: int, provider_name: str) -> None:
    with WebFixture() as web:
        provider: SearchProvider = (
            SearxngProvider(web.searxng_url)
            if provider_name == "searxng"
            else DdgsProvider(duckduckgo_url=web.duckduckgo_url)
        )
        fetcher = SafeFetcher(allow_private=True)
        # The first round pays for the thread pool and trafilatura's lazy set-up.
        cold = await staged_round(provider, fetcher)
        print(f"first round (cold): {cold.total * 1000:.1f} ms")
        measured = [await staged_round(provider, fetcher) for _ in range(rounds)]
        columns = {
            "search": [r.search for r in measured],
            "fetch": [r.fetch for r in measured],
            "extract": [r.extract for r in measured],
            "rank+pack": [r.rank for r in measured],
            "total": [r.total for r in measured],
        }
        _report(
            f"{provider_name}: {rounds} rounds, {PAGES} pages each, by stage",
            [(name, columns[name]) for name in STAGES],
        )

        research = WebResearch(provider, fetcher)
        facade = []
        for _ in range(rounds):
            start = time.perf_counter()
            outcome = await research.search(QUERY, context_size="medium", max_pages=PAGES)
            facade.append(time.perf_counter() - start)
            if len(outcome.passages) == 0:
                raise RuntimeError("the facade chose no passage")
        _report("WebResearch.search (stages overlapped)", [("total", facade)])
        orchestrated = await orchestrated_rounds(research, rounds)
        _report("a response through the orchestrator (scripted model)", [("total", orchestrated)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--provider", choices=("searxng", "ddgs"), default="searxng")
    arguments = parser.parse_args()
    anyio.run(main, arguments.rounds, arguments.provider)
