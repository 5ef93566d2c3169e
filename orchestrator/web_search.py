"""Built-in web search: the ``web_search`` and ``open_page`` tools over ``WebResearch``.

A request that asks for web search (``web_search_options``, or a ``web_search`` tool) gets two
built-in tools: ``web_search(query)`` searches and reads the top pages, ``open_page(url)`` reads
one page. Each call becomes a ``web_search_call`` output item (a ``search`` or ``open_page``
action) with its events, and returns text for the model in which every page carries a number,
``[n]``, that is the same for that page throughout the response (a :class:`SourceLedger`).

A provider or fetch failure is the tool's result text, and its item ends ``failed``; the
response goes on. After the final answer, the loop asks the registry for citations, and the
search tool answers from the ledger (see :mod:`.citations` for the rule).

``action.sources`` is filled only when the request includes ``web_search_call.action.sources``,
as OpenAI does.

With ``external_web_access: false`` nothing is fetched live: the search tool reads the search
provider's own results (each result's title, URL and snippet, numbered and citable as usual)
and no page is opened, so ``open_page`` is not offered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import anyio

from exloop.engine.protocol import ToolSpec
from exloop.tools.errors import ToolError
from exloop.tools.research import SearchOutcome, WebResearch
from exloop.tools.research import UserLocation as ResearchLocation

from .builtin import BuiltinCall, BuiltinFactory, BuiltinTool
from .citations import SourceLedger, content_words
from .conversation import last_user_text
from .items import (
    OpenPageAction,
    SearchAction,
    SearchSource,
    UrlCitation,
    WebSearchAction,
)
from .output import OutputWriter
from .spec import RunSpec, WebSearchOptions

SEARCH_TOOL = "web_search"
OPEN_PAGE_TOOL = "open_page"
INCLUDE_SOURCES = "web_search_call.action.sources"

SEARCH_DESCRIPTION = (
    "Search the web. Returns numbered sources with the passages of their pages that match the "
    "query; cite a source by its number, like [1]."
)
#: Without live web access the results are the provider's snippets.
SNIPPETS_DESCRIPTION = (
    "Search the web. Returns numbered results with their titles, URLs and snippets; cite a "
    "result by its number, like [1]."
)
OPEN_PAGE_DESCRIPTION = (
    "Open a web page by its URL, for example one from the search results, and read its text."
)

#: Bounds on the arguments: a small model writing a query under the call grammar could
#: otherwise run on until the token budget ends.
MAX_QUERY_CHARS = 160
MAX_URL_CHARS = 2048
#: Result pages a live search reads.
_MAX_PAGES = 5

# The header `WebResearch` writes for each source: "[n] title\nURL: url".
_SOURCE_HEADER = re.compile(r"^\[(\d+)\] (?=.*\nURL: )", re.MULTILINE)


def web_search_builtins(research: WebResearch) -> BuiltinFactory:
    """The factory for ``Orchestrator(builtins=...)``: the web tools for requests asking for
    web search (``spec.tools.web_search`` set), none for the others."""

    def make(spec: RunSpec) -> list[BuiltinTool]:
        options = spec.tools.web_search
        if options is None:
            return []
        question = last_user_text(spec.input)
        session = _Session(
            research,
            options,
            SourceLedger(question),
            question=question,
            include_sources=INCLUDE_SOURCES in spec.echo.include,
        )
        # Search first: a forced first step calls the registry's first tool.
        if not options.live:
            return [SearchTool(session)]
        return [SearchTool(session), OpenPageTool(session)]

    return make


@dataclass(frozen=True, slots=True)
class _Session:
    """What the two tools of one response share."""

    research: WebResearch
    options: WebSearchOptions
    ledger: SourceLedger
    question: str | None
    include_sources: bool

    @property
    def location(self) -> ResearchLocation | None:
        where = self.options.user_location
        if where is None:
            return None
        return ResearchLocation(
            country=where.country, region=where.region, city=where.city, timezone=where.timezone
        )


class SearchTool:
    """``web_search(query)``: search, read the top pages, return numbered passages."""

    def __init__(self, session: _Session) -> None:
        self._session = session
        self._forced = session.options.forced

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=SEARCH_TOOL,
            description=self._session.options.search_description
            or (SEARCH_DESCRIPTION if self._session.options.live else SNIPPETS_DESCRIPTION),
            parameters=_schema("query", "What to search for.", MAX_QUERY_CHARS),
            strict=True,
        )

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        session = self._session
        query = _argument(call.arguments, "query")
        if self._forced:
            # The search ``web_search_options`` forces is there to answer the question.
            self._forced = False
            query = forced_query(query, session.question)
        query = query or session.question or ""
        try:
            with _web_search_call(writer, SearchAction(query=query)) as item:
                if not query:
                    raise ToolError("Error: the search needs a query.")
                outcome = await session.research.search(
                    query,
                    context_size=session.options.search_context_size,
                    location=session.location,
                    # Without live access, the provider's snippets stand in for the pages.
                    max_pages=_MAX_PAGES if session.options.live else 0,
                )
                if session.include_sources:
                    sources = [SearchSource(url=s.url) for s in outcome.sources]
                    item.action = SearchAction(query=query, sources=sources)
        except ToolError as exc:
            return str(exc)
        return self._record(outcome)

    def cite(self, text: str) -> list[UrlCitation]:
        """The final answer's citations of every page this response's model read."""
        return self._session.ledger.cite(text)

    def _record(self, outcome: SearchOutcome) -> str:
        """Enter the sources in the ledger; the model's text, renumbered run-wide, with the
        pages that could not be read and why."""
        ledger = self._session.ledger
        numbers: dict[int, int] = {}
        for source in outcome.sources:
            passages = [p.text for p in outcome.passages if p.source == source.number]
            read = "\n".join(passages) or source.snippet
            numbers[source.number] = ledger.add(source.url, source.title, read)
        text = _SOURCE_HEADER.sub(lambda m: f"[{numbers.get(int(m[1]), m[1])}] ", outcome.text)
        by_url = {s.url: numbers[s.number] for s in outcome.sources}
        unread = [f"[{by_url[f.url]}] {f.reason}" for f in outcome.failures if f.url in by_url]
        if unread:
            text += "\n\nPages that could not be read (their snippets stand in):\n"
            text += "\n".join(unread)
        return text


class OpenPageTool:
    """``open_page(url)``: read one page; it joins the response's numbered sources."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=OPEN_PAGE_TOOL,
            description=self._session.options.extract_description or OPEN_PAGE_DESCRIPTION,
            parameters=_schema("url", "The http or https URL of the page.", MAX_URL_CHARS),
            strict=True,
        )

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        session = self._session
        url = _argument(call.arguments, "url")
        try:
            with _web_search_call(writer, OpenPageAction(url=url)):
                page = await session.research.open(
                    url, session.question, context_size=session.options.search_context_size
                )
        except ToolError as exc:
            return f"Could not open the page: {exc}"
        read = "\n".join(p.text for p in page.passages)
        number = session.ledger.add(page.url, page.title, read)
        return f"[{number}] {page.text}"


@dataclass(slots=True)
class _OpenCall:
    index: int
    action: WebSearchAction


@contextmanager
def _web_search_call(writer: OutputWriter, action: WebSearchAction) -> Iterator[_OpenCall]:
    """A ``web_search_call`` item, open while the block runs: ``completed`` with the block's
    final action, ``failed`` if it raises, ``incomplete`` if the response is cancelled (a
    finished response never holds a search that is still "searching")."""
    call = _OpenCall(writer.open_web_search(action), action)
    try:
        yield call
    except anyio.get_cancelled_exc_class():
        writer.close_web_search(call.index, call.action, "incomplete")
        raise
    except BaseException:
        writer.close_web_search(call.index, call.action, "failed")
        raise
    writer.close_web_search(call.index, call.action)


def forced_query(query: str, question: str | None) -> str:
    """The query of a forced first search: the model's, unless it is empty or shares no
    content word with the user's question (a small model may write "What do you want to
    know?"); then the question itself."""
    if question is None:
        return query
    asked = content_words(question)
    if not query or (asked and not asked & content_words(query)):
        return question
    return query


def _schema(name: str, description: str, max_length: int) -> dict[str, object]:
    field = {"type": "string", "description": description, "maxLength": max_length}
    return {
        "type": "object",
        "properties": {name: field},
        "required": [name],
        "additionalProperties": False,
    }


def _argument(arguments: Mapping[str, object], name: str) -> str:
    value = arguments.get(name)
    return value.strip() if isinstance(value, str) else ""
