"""Search providers against the loopback stand-ins of SearXNG and DuckDuckGo's HTML endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from exloop.tools import web_search
from exloop.tools.web_search import (
    DdgsProvider,
    SearchError,
    SearchRequest,
    SearchResult,
    SearxngProvider,
    ddgs_region,
    searxng_language,
)
from tests.fixtures.web import WebFixture

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("country", "region", "language"),
    [
        ("US", "us-en", "en-US"),
        ("gb", "uk-en", "en-GB"),
        ("DE", "de-de", "de-DE"),
        ("JP", "jp-jp", "ja-JP"),
        ("SI", "sl-sl", "sl-SI"),
        ("SA", "xa-ar", "ar-SA"),
        ("ZZ", "wt-wt", None),
        (None, "wt-wt", None),
    ],
)
def test_country_to_locale(country: str | None, region: str, language: str | None) -> None:
    assert ddgs_region(country) == region
    assert searxng_language(country) == language


def test_request_validation_and_domain_filter() -> None:
    with pytest.raises(ValueError):
        SearchRequest("   ")
    with pytest.raises(ValueError):
        SearchRequest("bees", max_results=0)
    request = SearchRequest("bees", allowed_domains=("example.org", "bees.net"))
    assert request.provider_query == "bees (site:example.org OR site:bees.net)"
    assert request.admits("https://docs.example.org/a")
    assert not request.admits("https://notexample.org/a")
    assert SearchRequest("bees").admits("http://anything/")


async def test_searxng_returns_results_and_sends_locale(web: WebFixture) -> None:
    provider = SearxngProvider(web.searxng_url)
    results = await provider.search(SearchRequest("sourdough starter flour", region="GB"))
    assert results[0] == SearchResult(
        title="Keeping a sourdough starter alive",
        url=web.article_url("sourdough"),
        snippet="Wild yeast and lactic acid bacteria, flour and water: how a starter works.",
    )
    sent = web.requests[-1].query
    assert sent["format"] == "json"
    assert sent["language"] == "en-GB"
    assert sent["safesearch"] == "1"


async def test_searxng_max_results_and_domains(web: WebFixture) -> None:
    provider = SearxngProvider(web.searxng_url)
    assert len(await provider.search(SearchRequest("honeybee dance", max_results=1))) == 1
    assert await provider.search(SearchRequest("honeybee", allowed_domains=("example.org",))) == []
    assert "site:example.org" in web.requests[-1].query["q"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/status/503", "HTTP 503"),
        ("/status/403", "format=json"),
        ("/status/200", "did not answer JSON"),
    ],
)
async def test_searxng_failures(web: WebFixture, path: str, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        await SearxngProvider(web.url(path)).search(SearchRequest("bees"))


async def test_searxng_unreachable() -> None:
    with pytest.raises(SearchError, match="could not reach"):
        await SearxngProvider("http://127.0.0.1:9").search(SearchRequest("bees"))


async def test_ddgs_parses_the_duckduckgo_stand_in(web: WebFixture) -> None:
    provider = DdgsProvider(duckduckgo_url=web.duckduckgo_url)
    results = await provider.search(SearchRequest("ocean tides moon", region="DE"))
    assert results[0].url == web.article_url("tides")
    assert results[0].title == "What causes the ocean tides"
    assert "Moon" in results[0].snippet
    posted = web.requests[-1]
    assert (posted.method, posted.path) == ("POST", "/html/")
    assert posted.form["q"] == "ocean tides moon"
    assert posted.form["l"] == "de-de"


async def test_ddgs_no_results_is_an_empty_list(web: WebFixture) -> None:
    provider = DdgsProvider(duckduckgo_url=web.duckduckgo_url)
    assert await provider.search(SearchRequest("xylophone quartz")) == []


async def test_ddgs_failures_become_search_errors(web: WebFixture) -> None:
    with pytest.raises(SearchError, match="error status"):
        await DdgsProvider(duckduckgo_url=web.url("/status/503/")).search(SearchRequest("bees"))
    with pytest.raises(SearchError, match="Web search failed"):
        await DdgsProvider(duckduckgo_url="http://127.0.0.1:9/html/").search(SearchRequest("bees"))


def test_ddgs_override_needs_the_duckduckgo_backend() -> None:
    with pytest.raises(ValueError):
        DdgsProvider(backend="bing", duckduckgo_url="http://127.0.0.1:9/html/")


class _ScriptedDDGS:
    """Stands in for ddgs.DDGS on the default (metasearch) path, which would need the internet."""

    outcome: list[dict[str, str]] | Exception = []
    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        pass

    def text(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
        self.calls.append({"query": query, **kwargs})
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RatelimitException("202 Ratelimit"), "rate-limited"),
        (TimeoutException("timed out"), "timed out"),
        (DDGSException("ConnectError: boom"), "Web search failed: ConnectError: boom"),
    ],
)
async def test_ddgs_metasearch_errors(
    monkeypatch: pytest.MonkeyPatch, error: Exception, message: str
) -> None:
    monkeypatch.setattr(web_search, "DDGS", _ScriptedDDGS)
    monkeypatch.setattr(_ScriptedDDGS, "outcome", error)
    with pytest.raises(SearchError, match=message):
        await DdgsProvider().search(SearchRequest("bees"))


async def test_ddgs_metasearch_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_search, "DDGS", _ScriptedDDGS)
    monkeypatch.setattr(_ScriptedDDGS, "calls", [])
    hits = [
        {"title": "A", "href": "https://a.example/", "body": "first"},
        {"title": "A again", "href": "https://a.example/", "body": "duplicate"},
        {"title": "B", "href": "https://b.example/", "body": "second"},
    ]
    monkeypatch.setattr(_ScriptedDDGS, "outcome", hits)
    results = await DdgsProvider(backend="duckduckgo,brave").search(
        SearchRequest("bees", region="FR", safesearch="off")
    )
    assert [r.url for r in results] == ["https://a.example/", "https://b.example/"]
    (call,) = _ScriptedDDGS.calls
    assert call["region"] == "fr-fr"
    assert call["safesearch"] == "off"
    assert call["backend"] == "duckduckgo,brave"

    monkeypatch.setattr(_ScriptedDDGS, "outcome", DDGSException("No results found."))
    assert await DdgsProvider().search(SearchRequest("bees")) == []
