"""The WebResearch facade end to end against the loopback web."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from exloop.tools.errors import BlockedAddress, SearchError
from exloop.tools.fetch import SafeFetcher
from exloop.tools.rank import CONTEXT_BUDGETS, ContextSize, approx_tokens
from exloop.tools.research import UserLocation, WebResearch
from exloop.tools.web_search import DdgsProvider, SearchRequest, SearchResult, SearxngProvider
from tests.fixtures.web import WebFixture

pytestmark = pytest.mark.anyio


def _research(web: WebFixture) -> WebResearch:
    return WebResearch(SearxngProvider(web.searxng_url), SafeFetcher(allow_private=True))


class _FixedProvider:
    """Returns fixed results and remembers the requests it got."""

    def __init__(self, results: list[SearchResult]) -> None:
        self.results = results
        self.requests: list[SearchRequest] = []

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        self.requests.append(request)
        return self.results


async def test_search_reads_pages_and_numbers_sources(web: WebFixture) -> None:
    outcome = await _research(web).search("honeybee waggle dance distance kilometre")

    assert outcome.results[0].url == web.article_url("honeybees")
    first, second = outcome.sources[:2]
    assert (first.number, first.url) == (1, web.article_url("honeybees"))
    assert (second.number, second.url) == (2, web.url("/articles/colony-collapse"))
    assert outcome.source(1) == first and outcome.source(99) is None

    # The archived page is gone: it is skipped, and its snippet stands in for it.
    assert [f.url for f in outcome.failures] == [second.url]
    assert "404" in outcome.failures[0].reason
    assert all(p.source != 2 for p in outcome.passages)
    assert f"[2] {second.title}\nURL: {second.url}\n{second.snippet}" in outcome.text

    # The passage that answers the question is there, attributed to source 1.
    answer = next(p for p in outcome.passages if "one kilometre" in p.text)
    assert (answer.source, answer.url, answer.title) == (1, first.url, first.title)
    assert answer.score > 0
    assert outcome.text.startswith('Web results for "honeybee waggle dance distance kilometre"')
    assert f"[1] {first.title}\nURL: {first.url}\n" in outcome.text
    assert "one kilometre" in outcome.text


@pytest.mark.parametrize("size", ["low", "medium", "high"])
async def test_search_text_fits_the_budget(web: WebFixture, size: ContextSize) -> None:
    # A query touching every article, so there is more text than the smallest budget holds.
    query = "honeybee sourdough tides rust volcano magma yeast moon borrow dance"
    budgets: dict[ContextSize, int] = {"low": 250, "medium": 600, "high": 6000}
    research = WebResearch(
        SearxngProvider(web.searxng_url), SafeFetcher(allow_private=True), budgets=budgets
    )
    outcome = await research.search(query, context_size=size, max_pages=6)
    assert approx_tokens(outcome.text) <= budgets[size]
    assert outcome.passages


async def test_bigger_context_sizes_carry_more_text(web: WebFixture) -> None:
    query = "honeybee sourdough tides rust volcano magma yeast moon borrow dance"
    words = lambda text: len(text.split())  # noqa: E731 - a token counter for this test
    research = WebResearch(
        SearxngProvider(web.searxng_url),
        SafeFetcher(allow_private=True),
        count_tokens=words,
        budgets={"low": 200, "medium": 500, "high": 5000},
    )
    low = await research.search(query, context_size="low", max_pages=6)
    high = await research.search(query, context_size="high", max_pages=6)
    assert words(low.text) <= 200
    assert len(high.passages) > len(low.passages)
    assert CONTEXT_BUDGETS["medium"] == 3000


async def test_search_through_ddgs(web: WebFixture) -> None:
    research = WebResearch(
        DdgsProvider(duckduckgo_url=web.duckduckgo_url), SafeFetcher(allow_private=True)
    )
    outcome = await research.search("magma viscosity explosive eruption")
    assert outcome.sources[0].url == web.article_url("volcanoes")
    assert any("silica-rich rhyolite" in p.text for p in outcome.passages)


async def test_location_and_domains_reach_the_provider() -> None:
    provider = _FixedProvider([])
    research = WebResearch(provider, SafeFetcher())
    outcome = await research.search(
        "bees", location=UserLocation(country="NZ", city="Wellington"), allowed_domains=["a.nz"]
    )
    (request,) = provider.requests
    assert (request.region, request.allowed_domains) == ("NZ", ("a.nz",))
    assert outcome.sources == () and outcome.passages == ()
    assert outcome.text == 'No web results for "bees".'


async def test_provider_failure_raises(web: WebFixture) -> None:
    research = WebResearch(SearxngProvider(web.url("/status/502")), SafeFetcher())
    with pytest.raises(SearchError, match="HTTP 502"):
        await research.search("bees")


async def test_blocked_pages_are_skipped_not_fatal(web: WebFixture) -> None:
    provider = _FixedProvider(
        [
            SearchResult("Metadata", "http://169.254.169.254/latest/", "instance data"),
            SearchResult("Tides", web.article_url("tides"), "tides snippet"),
        ]
    )
    outcome = await WebResearch(provider, SafeFetcher()).search("tides")
    assert [f.url for f in outcome.failures] == [s.url for s in outcome.sources]
    assert outcome.passages == ()
    assert "[1] Metadata" in outcome.text and "instance data" in outcome.text


async def test_open_ranks_one_page(web: WebFixture) -> None:
    page = await _research(web).open(web.article_url("tides"), "Bay of Fundy", context_size="low")
    assert page.url == web.article_url("tides")
    assert page.title == "What causes the ocean tides"
    assert page.text.startswith(f"What causes the ocean tides\nURL: {page.url}\n\n")
    assert any("sixteen metres" in p.text for p in page.passages)
    assert approx_tokens(page.text) <= CONTEXT_BUDGETS["low"]


async def test_open_without_query_reads_from_the_top(web: WebFixture) -> None:
    research = WebResearch(
        _FixedProvider([]),
        SafeFetcher(allow_private=True),
        count_tokens=lambda text: len(text.split()),
        budgets={"low": 150, "medium": 3000, "high": 6000},
    )
    page = await research.open(web.article_url("rust-ownership"), context_size="low")
    positions = [p.text for p in page.passages]
    assert positions and positions[0].startswith("# Ownership and borrowing in Rust")
    assert len(page.text.split()) <= 150
    assert "## Lifetimes" not in page.text


async def test_open_raises_the_fetch_error(web: WebFixture) -> None:
    with pytest.raises(BlockedAddress):
        await WebResearch(_FixedProvider([]), SafeFetcher()).open(web.article_url("tides"))


async def test_cancelling_a_search_stops_its_fetches(web: WebFixture) -> None:
    slow = [SearchResult(f"Slow {n}", web.url(f"/slow?seconds=3&n={n}"), "") for n in range(3)]
    research = WebResearch(_FixedProvider(slow), SafeFetcher(allow_private=True))
    started = time.monotonic()
    with anyio.move_on_after(0.3) as scope:
        await research.search("slow")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 1.0


async def test_ranking_and_packing_run_in_a_worker_thread(web: WebFixture) -> None:
    """Splitting, BM25 ranking and packing take about 40 ms per 400 KB page: never on the
    event loop. The token counter (called by the packing) says which thread it runs on."""
    loop_thread = threading.get_ident()
    counted: list[tuple[str, int]] = []

    def counting(text: str) -> int:
        counted.append((text, threading.get_ident()))
        return approx_tokens(text)

    research = WebResearch(
        SearxngProvider(web.searxng_url), SafeFetcher(allow_private=True), count_tokens=counting
    )
    outcome = await research.search("honeybee waggle dance distance kilometre")
    page = await research.open(web.article_url("tides"), "moon tides")
    for passages in (outcome.passages, page.passages):
        texts = {p.text for p in passages}
        threads = {thread for text, thread in counted if text.removeprefix("\n\n") in texts}
        assert threads and loop_thread not in threads
