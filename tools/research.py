"""Web research for the model: search, read the top pages, keep the passages that answer.

``WebResearch`` is what the orchestrator's built-in web search tool calls. ``search`` asks the
provider, fetches the top pages concurrently, extracts their text, ranks every chunk of every page
against the query and packs the best into the token budget of the requested context size; the
result carries the raw search results, the chosen passages with their sources, and the text the
model reads, where sources are numbered so the model can cite them as [1], [2]. ``open`` does the
same for one page.

Failures: a provider failure raises ``SearchError``; a page that cannot be fetched or has no text
is skipped and noted in ``failures`` (its search snippet stands in for it); ``open`` raises the
``FetchError`` of its page. Both are meant to be shown to the model as the tool's result.
Extraction and ranking (splitting, BM25, packing) run in worker threads, off the event loop.
Cancelling the caller's scope stops every fetch at once; worker threads are abandoned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from .errors import FetchError
from .extract import ExtractedPage, extract
from .fetch import PageFetcher
from .rank import (
    CONTEXT_BUDGETS,
    Chunk,
    ContextSize,
    RankedChunk,
    TokenCounter,
    approx_tokens,
    pack,
    rank_chunks,
    split_chunks,
)
from .web_search import SearchProvider, SearchRequest, SearchResult

__all__ = [
    "PageFailure",
    "PageOutcome",
    "Passage",
    "SearchOutcome",
    "Source",
    "UserLocation",
    "WebResearch",
]

_GAP = "\n\n"  # between passages in the model's text


@dataclass(frozen=True)
class UserLocation:
    """The user's approximate location, as OpenAI's ``web_search`` tool takes it.

    Providers use ``country`` (ISO 3166-1 alpha-2) to pick their region; the other fields are
    carried for providers that can use them.
    """

    country: str | None = None
    region: str | None = None
    city: str | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class Source:
    """A search result as the model sees it: ``number`` is what it cites, as ``[number]``."""

    number: int
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Passage:
    """A chunk of a page chosen for the model, with the number and URL of its source."""

    source: int
    url: str
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class PageFailure:
    """A result page that was skipped, and why (the fetch error's message)."""

    url: str
    reason: str


@dataclass(frozen=True)
class SearchOutcome:
    """Everything one search produced.

    ``sources`` are numbered from 1 in result order; ``passages`` are grouped by source and in
    page order; ``text`` is what the model reads.
    """

    query: str
    results: tuple[SearchResult, ...]
    sources: tuple[Source, ...]
    passages: tuple[Passage, ...]
    failures: tuple[PageFailure, ...]
    text: str

    def source(self, number: int) -> Source | None:
        """The source the model cites as ``[number]``, or None if there is none."""
        return next((s for s in self.sources if s.number == number), None)


@dataclass(frozen=True)
class PageOutcome:
    """One opened page: its final URL and title, the passages kept, and the model's text."""

    url: str
    title: str
    passages: tuple[Passage, ...]
    text: str


class WebResearch:
    """Search and page reading with budgets, over a provider and a page fetcher (a
    ``SafeFetcher``).

    ``count_tokens`` measures text against the budgets (default: about four characters per
    token; pass the model's tokenizer for exact figures; it is called from worker threads);
    ``budgets`` maps each ``search_context_size`` to its token budget.
    """

    def __init__(
        self,
        provider: SearchProvider,
        fetcher: PageFetcher,
        *,
        max_results: int = 8,
        count_tokens: TokenCounter = approx_tokens,
        budgets: Mapping[ContextSize, int] = CONTEXT_BUDGETS,
    ) -> None:
        self._provider = provider
        self._fetcher = fetcher
        self._max_results = max_results
        self._count_tokens = count_tokens
        self._budgets = dict(budgets)

    async def search(
        self,
        query: str,
        *,
        context_size: ContextSize = "medium",
        location: UserLocation | None = None,
        max_pages: int = 5,
        allowed_domains: Sequence[str] = (),
    ) -> SearchOutcome:
        """Search, read the top ``max_pages`` result pages, and keep what answers ``query``."""
        request = SearchRequest(
            query=query,
            max_results=self._max_results,
            region=location.country if location else None,
            allowed_domains=tuple(allowed_domains),
        )
        results = await self._provider.search(request)
        budget = self._budgets[context_size]
        sources = self._shown_sources(results, budget)
        pages, failures = await self._read_all([s.url for s in sources[:max_pages]])
        # Splitting, ranking and packing is pure CPU work (tens of ms per large page).
        passages, text = await anyio.to_thread.run_sync(
            self._select_passages, query, sources, pages, budget, abandon_on_cancel=True
        )
        return SearchOutcome(
            query=query,
            results=tuple(results),
            sources=sources,
            passages=passages,
            failures=tuple(failures),
            text=text,
        )

    async def open(
        self, url: str, query: str | None = None, *, context_size: ContextSize = "medium"
    ) -> PageOutcome:
        """Fetch and read one page; with a ``query``, the passages that match it come first.

        Raises the page's ``FetchError``.
        """
        page = await extract(await self._fetcher.fetch(url))
        return await anyio.to_thread.run_sync(
            self._read_page, page, query, context_size, abandon_on_cancel=True
        )

    def _select_passages(
        self,
        query: str,
        sources: tuple[Source, ...],
        pages: Sequence[ExtractedPage | None],
        budget: int,
    ) -> tuple[tuple[Passage, ...], str]:
        """The passages of the pages that best answer ``query`` within ``budget``, and the
        model's text of the search. Blocking: runs in a worker thread."""
        chunks = [
            chunk
            for source, page in zip(sources, pages, strict=False)
            if page is not None
            for chunk in split_chunks(page.text, source=source.number)
        ]
        ranked = rank_chunks(query, chunks)
        # Chunks that share no word with the query are noise in a search, unless nothing
        # matched at all; then the pages' openings are the best there is.
        if any(r.score > 0 for r in ranked):
            ranked = [r for r in ranked if r.score > 0]
        # The fixed part shows every source with its snippet: an upper bound, since a source that
        # gets passages shows them instead of the snippet.
        fixed = self._count_tokens(_render_search(query, sources, {}))
        chosen = pack(ranked, budget - fixed, count_tokens=self._count_tokens, separator=_GAP)

        by_number = {s.number: s for s in sources}
        passages = tuple(
            _passage(r, by_number[r.chunk.source].url, by_number[r.chunk.source].title)
            for r in sorted(chosen, key=lambda r: (r.chunk.source, r.chunk.position))
        )
        grouped: dict[int, list[Passage]] = {}
        for passage in passages:
            grouped.setdefault(passage.source, []).append(passage)
        return passages, _render_search(query, sources, grouped)

    def _read_page(
        self, page: ExtractedPage, query: str | None, context_size: ContextSize
    ) -> PageOutcome:
        """One page's passages (those matching ``query`` first) within the budget, and the
        model's text. Blocking: runs in a worker thread."""
        title = page.title or page.url
        header = f"{title}\nURL: {page.url}\n"
        chunks = split_chunks(page.text)
        ranked = rank_chunks(query, chunks) if query else [RankedChunk(c, 0.0) for c in chunks]
        budget = self._budgets[context_size] - self._count_tokens(header)
        chosen = pack(ranked, budget, count_tokens=self._count_tokens, separator=_GAP)
        passages = tuple(
            _passage(r, page.url, title) for r in sorted(chosen, key=lambda r: r.chunk.position)
        )
        body = _GAP.join(p.text for p in passages) or "(The page has no readable text.)"
        return PageOutcome(url=page.url, title=title, passages=passages, text=f"{header}\n{body}")

    def _shown_sources(self, results: Sequence[SearchResult], budget: int) -> tuple[Source, ...]:
        """Number the results; keep those whose headers and snippets fit in half the budget."""
        sources: list[Source] = []
        used = 0
        for number, result in enumerate(results, start=1):
            source = Source(number, result.title or result.url, result.url, result.snippet)
            cost = self._count_tokens(_render_source(source, ()))
            if sources and used + cost > budget // 2:
                break
            sources.append(source)
            used += cost
        return tuple(sources)

    async def _read_all(
        self, urls: Sequence[str]
    ) -> tuple[list[ExtractedPage | None], list[PageFailure]]:
        """Fetch and extract the pages concurrently; a page that fails is None in the list."""
        pages: list[ExtractedPage | None] = [None] * len(urls)
        failures: list[PageFailure] = []

        async def read(index: int, url: str) -> None:
            try:
                page = await extract(await self._fetcher.fetch(url))
            except FetchError as exc:
                failures.append(PageFailure(url, str(exc)))
                return
            if page.text:
                pages[index] = page
            else:
                failures.append(PageFailure(url, "The page has no readable text."))

        async with anyio.create_task_group() as group:
            for index, url in enumerate(urls):
                group.start_soon(read, index, url)
        failures.sort(key=lambda f: urls.index(f.url))
        return pages, failures


def _passage(ranked: RankedChunk, url: str, title: str) -> Passage:
    chunk: Chunk = ranked.chunk
    return Passage(chunk.source, url, title, chunk.text, ranked.score)


def _render_source(source: Source, passages: Sequence[Passage]) -> str:
    body = _GAP.join(p.text for p in passages) if passages else source.snippet
    return f"[{source.number}] {source.title}\nURL: {source.url}\n{body}"


def _render_search(
    query: str, sources: Sequence[Source], passages: Mapping[int, Sequence[Passage]]
) -> str:
    """The model's view: numbered sources, each with its passages or, failing that, its snippet."""
    if not sources:
        return f'No web results for "{query}".'
    blocks = [_render_source(s, passages.get(s.number, ())) for s in sources]
    intro = f'Web results for "{query}". Cite a source by its number, like [1].'
    return "\n\n".join([intro, *blocks])
