"""Built-in web search end to end: the real server and default model, the loopback web, and
OpenAI's SDK.

Servers search the web fixture through its SearXNG stand-in (and, once, ddgs pointed at its
DuckDuckGo stand-in). The default model is tiny: tests check the shape of what it produced
(items, events, where citations point), never the wording of its answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import (
    ResponseOutputTextAnnotationAddedEvent,
    ToolChoiceTypes,
    WebSearchTool,
)

from tests.fixtures.articles import ARTICLES
from tests.fixtures.web import WebFixture

from .conftest import REQUEST_TIMEOUT, ServerProcess

QUESTION = "What causes the ocean tides?"
#: The forced search and one answer: no second round, so each request stays short.
ROUNDS = ("--max-tool-rounds", "1")
OPTIONS = {"search_context_size": "low"}
#: Greedy and short: the answer is cut off after a few sentences, which still carry citations.
LIMITS: dict[str, Any] = {"temperature": 0, "max_output_tokens": 120}


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixture]:
    with WebFixture() as fixture:
        yield fixture


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="test", max_retries=0, timeout=REQUEST_TIMEOUT
    )


@pytest.fixture(scope="module")
def client(web: WebFixture) -> Iterator[openai.OpenAI]:
    """A server searching the fixture's SearXNG, allowed to read the fixture's pages."""
    with ServerProcess(
        "--search-provider", "searxng", "--searxng-url", web.searxng_url,
        "--fetch-allow-private", *ROUNDS,
    ) as server, sdk(server) as client:  # fmt: skip
        yield client


def article_urls(web: WebFixture) -> set[str]:
    """Every page the search stand-ins list (the archived one answers 404)."""
    return {web.article_url(a.slug) for a in ARTICLES} | {web.url("/articles/colony-collapse")}


def check_citations(response: SdkResponse, web: WebFixture) -> None:
    """The answer cites at least one page, every citation a fixture article over real text."""
    message = response.output[-1]
    assert message.type == "message"
    (part,) = message.content
    assert part.type == "output_text" and part.text
    assert part.annotations, f"no citations in {part.text!r}"
    for citation in part.annotations:
        assert citation.type == "url_citation"
        assert citation.url in article_urls(web)
        assert citation.title
        assert 0 <= citation.start_index < citation.end_index <= len(part.text)
        assert part.text[citation.start_index : citation.end_index].strip()


def test_web_search_options_give_search_items_an_answer_and_citations(
    client: openai.OpenAI, web: WebFixture
) -> None:
    response = client.responses.create(
        model="default",
        input=QUESTION,
        include=["web_search_call.action.sources"],
        extra_body={"web_search_options": OPTIONS},
        **LIMITS,
    )
    search = response.output[0]
    assert search.type == "web_search_call" and search.status == "completed"
    assert search.id.startswith("ws_")
    assert search.action.type == "search" and search.action.query
    sources = [s.url for s in search.action.sources or []]
    assert web.article_url("tides") in sources
    assert set(sources) <= article_urls(web)
    check_citations(response, web)


def test_web_search_tool_with_tool_choice_searches(client: openai.OpenAI, web: WebFixture) -> None:
    response = client.responses.create(
        model="default",
        input=QUESTION,
        tools=[{"type": "web_search", "search_context_size": "low"}],
        tool_choice={"type": "web_search_preview"},  # the SDK's name for it; both are accepted
        **LIMITS,
    )
    assert response.tools[0].type == "web_search"
    search = response.output[0]
    assert search.type == "web_search_call" and search.status == "completed"
    assert search.action.sources == []  # not included
    check_citations(response, web)


def test_without_external_web_access_only_search_results_are_read(
    client: openai.OpenAI, web: WebFixture
) -> None:
    before = len(web.requests)
    response = client.responses.create(
        model="default",
        input=QUESTION,
        include=["web_search_call.action.sources"],
        tools=[
            {
                "type": "web_search",
                "search_context_size": "low",
                "external_web_access": False,
                "search_content_types": ["text", "image"],  # accepted; results are text
            }
        ],
        # The SDK types no {"type": "web_search"} choice; LiteLLM sends it, and it is echoed as
        # the SDK's web_search_preview.
        extra_body={"tool_choice": {"type": "web_search"}},
        **LIMITS,
    )
    assert isinstance(response.tool_choice, ToolChoiceTypes)
    assert response.tool_choice.type == "web_search_preview"
    assert isinstance(response.tools[0], WebSearchTool)
    assert response.tools[0].external_web_access is False
    # The SDK types search_content_types on web_search_preview only: here it is an extra field.
    assert response.tools[0].to_dict()["search_content_types"] == ["text", "image"]
    search = response.output[0]
    assert search.type == "web_search_call" and search.status == "completed"
    assert web.article_url("tides") in [s.url for s in search.action.sources or []]
    # The provider was asked; no page was fetched, and open_page was not offered.
    paths = [r.path for r in web.requests[before:]]
    assert paths and not [p for p in paths if p.startswith("/articles/")]
    assert all(item.type != "web_search_call" or item.action.type == "search"
               for item in response.output)  # fmt: skip


def test_streaming_emits_the_web_search_events_in_order(
    client: openai.OpenAI, web: WebFixture
) -> None:
    # The SDK's stream helper checks the event order as it rebuilds the response.
    with client.responses.stream(
        model="default",
        input=QUESTION,
        extra_body={"web_search_options": OPTIONS},
        **LIMITS,
    ) as stream:
        events = list(stream)
    # The answer may be cut off (incomplete): the last event carries the response either way.
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    search_id = final.output[0].id

    def about_the_search(event: Any) -> bool:
        if event.type.startswith("response.output_item."):
            return bool(event.item.id == search_id)
        return getattr(event, "item_id", None) == search_id

    around = [e.type for e in events if about_the_search(e)]
    assert around == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    message = final.output[-1]
    assert message.type == "message" and message.content[0].type == "output_text"
    cited = [a.model_dump() for a in message.content[0].annotations]
    streamed = [
        e.annotation for e in events if isinstance(e, ResponseOutputTextAnnotationAddedEvent)
    ]
    assert [a.model_dump() if a else None for a in streamed] == cited
    check_citations(final, web)


def test_chat_completions_return_annotations_on_the_message(
    client: openai.OpenAI, web: WebFixture
) -> None:
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": QUESTION}],
        web_search_options={"search_context_size": "low"},
        temperature=0,
        max_tokens=120,
    )
    message = completion.choices[0].message
    assert message.content and message.annotations
    for annotation in message.annotations:
        citation = annotation.url_citation
        assert annotation.type == "url_citation" and citation.url in article_urls(web)
        assert 0 <= citation.start_index < citation.end_index <= len(message.content)


def search_once(*flags: str) -> SdkResponse:
    """One web_search_options request to a server of its own, started with ``flags``."""
    with ServerProcess(*flags, *ROUNDS) as server, sdk(server) as client:
        return client.responses.create(
            model="default",
            input=QUESTION,
            include=["web_search_call.action.sources"],
            extra_body={"web_search_options": OPTIONS},
            **LIMITS,
        )


def test_ddgs_provider_searches_the_duckduckgo_stand_in(web: WebFixture) -> None:
    before = len(web.requests)
    response = search_once(
        "--search-provider", "ddgs", "--ddgs-url", web.duckduckgo_url, "--fetch-allow-private"
    )
    search = response.output[0]
    assert search.type == "web_search_call" and search.status == "completed"
    assert web.article_url("tides") in [s.url for s in search.action.sources or []]
    seen = [(r.method, r.path) for r in web.requests[before:]]
    assert ("POST", "/html/") in seen and ("GET", "/articles/tides") in seen


class _HostileSearxng:
    """A SearXNG stand-in whose results point at internal addresses."""

    def __init__(self, urls: list[str]) -> None:
        body = json.dumps(
            {"results": [{"url": u, "title": f"Tides page {i}", "content": "Ocean tides."}
                         for i, u in enumerate(urls)]}
        ).encode()  # fmt: skip

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _HostileSearxng:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def test_the_ssrf_guard_refuses_internal_result_pages(web: WebFixture) -> None:
    # Without --fetch-allow-private: loopback (the fixture itself), a private address, the
    # cloud metadata address, and a redirect into it (refused at its loopback first hop; the
    # redirect hop itself is tested in tests/tools and tests/orchestrator).
    internal = [
        web.article_url("tides"),
        "http://10.0.0.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        web.url("/redirect?to=http://169.254.169.254/latest/meta-data/"),
    ]
    before = len(web.requests)
    with _HostileSearxng(internal) as searxng:
        response = search_once("--search-provider", "searxng", "--searxng-url", searxng.url)
    # The search worked, its pages were refused (the model read their snippets instead), and
    # the response went on.
    assert response.status in ("completed", "incomplete")
    assert response.error is None
    search = response.output[0]
    assert search.type == "web_search_call" and search.status == "completed"
    assert [s.url for s in search.action.sources or []] == internal
    # Neither the loopback page nor the redirect was requested. (What the model was told for
    # each refused page is checked in tests/orchestrator/test_web_search.py.)
    assert web.requests[before:] == [], "the fixture was reached"
