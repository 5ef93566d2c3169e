"""Web search providers behind one interface.

A provider turns a ``SearchRequest`` into a short list of ``SearchResult`` (title, URL, snippet)
or raises ``SearchError`` with a message the model can read. Two providers:

* ``DdgsProvider``: the ``ddgs`` metasearch library (DuckDuckGo, Bing, Brave, ... scraped; no
  key needed). ddgs is synchronous and runs in a worker thread.
* ``SearxngProvider``: a SearXNG instance's JSON API (``format=json`` must be enabled in the
  instance's ``settings.yml``).

``SearchRequest.region`` is an ISO 3166-1 country code (from the user's approximate location);
each provider maps it to its own locale parameter.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

import anyio
import httpx
from ddgs import DDGS
from ddgs.engines.duckduckgo import Duckduckgo
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from .errors import SearchError

__all__ = [
    "DdgsProvider",
    "SearchError",
    "SearchProvider",
    "SearchRequest",
    "SearchResult",
    "SearxngProvider",
    "ddgs_region",
    "searxng_language",
]

SafeSearch = Literal["on", "moderate", "off"]


@dataclass(frozen=True)
class SearchRequest:
    """One search.

    ``region`` is an ISO 3166-1 alpha-2 country code (``"US"``) or None for no locale;
    ``allowed_domains`` restricts results to these domains and their subdomains.
    """

    query: str
    max_results: int = 8
    region: str | None = None
    safesearch: SafeSearch = "moderate"
    allowed_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise ValueError("the search query is empty")
        if self.max_results < 1:
            raise ValueError("max_results must be at least 1")

    @property
    def provider_query(self) -> str:
        """The query text with ``site:`` operators for the allowed domains, if any."""
        if not self.allowed_domains:
            return self.query
        sites = " OR ".join(f"site:{domain}" for domain in self.allowed_domains)
        return (
            f"{self.query} ({sites})" if len(self.allowed_domains) > 1 else f"{self.query} {sites}"
        )

    def admits(self, url: str) -> bool:
        """Whether a result URL is inside ``allowed_domains`` (always, when there are none)."""
        if not self.allowed_domains:
            return True
        host = (urlsplit(url).hostname or "").lower()
        return any(
            host == domain.lower() or host.endswith(f".{domain.lower()}")
            for domain in self.allowed_domains
        )


@dataclass(frozen=True)
class SearchResult:
    """One hit: the page title, its URL and the engine's snippet of it."""

    title: str
    url: str
    snippet: str


class SearchProvider(Protocol):
    """Anything that can answer a ``SearchRequest``."""

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        """Return up to ``request.max_results`` results; raise ``SearchError`` on failure."""
        ...


def _finish(request: SearchRequest, results: list[SearchResult]) -> list[SearchResult]:
    """Drop results without a URL or outside the allowed domains, and duplicates; cut to size."""
    seen: set[str] = set()
    kept = []
    for result in results:
        if result.url and result.url not in seen and request.admits(result.url):
            seen.add(result.url)
            kept.append(result)
    return kept[: request.max_results]


# DuckDuckGo's region codes ("kl"), by the country they stand for. DuckDuckGo has its own quirks:
# the United Kingdom is "uk", Slovenia "sl", Japanese "jp", and Arabic-speaking countries and Latin
# America share the pseudo-countries "xa" and "xl".
_DDGS_REGIONS: dict[str, str] = {
    "AR": "ar-es", "AT": "at-de", "AU": "au-en", "BE": "be-nl", "BG": "bg-bg", "BR": "br-pt",
    "CA": "ca-en", "CH": "ch-de", "CL": "cl-es", "CN": "cn-zh", "CO": "co-es", "CZ": "cz-cs",
    "DE": "de-de", "DK": "dk-da", "EE": "ee-et", "ES": "es-es", "FI": "fi-fi", "FR": "fr-fr",
    "GB": "uk-en", "GR": "gr-el", "HK": "hk-tzh", "HR": "hr-hr", "HU": "hu-hu", "ID": "id-id",
    "IE": "ie-en", "IL": "il-he", "IN": "in-en", "IT": "it-it", "JP": "jp-jp", "KR": "kr-kr",
    "LT": "lt-lt", "LV": "lv-lv", "MX": "mx-es", "MY": "my-ms", "NL": "nl-nl", "NO": "no-no",
    "NZ": "nz-en", "PE": "pe-es", "PH": "ph-en", "PL": "pl-pl", "PT": "pt-pt", "RO": "ro-ro",
    "RU": "ru-ru", "SE": "se-sv", "SG": "sg-en", "SI": "sl-sl", "SK": "sk-sk", "TH": "th-th",
    "TR": "tr-tr", "TW": "tw-tzh", "UA": "ua-uk", "US": "us-en", "VE": "ve-es", "VN": "vn-vi",
    "ZA": "za-en",
    **dict.fromkeys(
        ("AE", "BH", "DZ", "EG", "IQ", "JO", "KW", "LB", "MA", "OM", "QA", "SA", "TN"), "xa-ar"
    ),
    **dict.fromkeys(
        ("BO", "CR", "CU", "DO", "EC", "GT", "HN", "NI", "PA", "PY", "SV", "UY"), "xl-es"
    ),
}  # fmt: skip
_DDGS_NO_REGION = "wt-wt"
# DuckDuckGo language parts that are not ISO 639-1.
_DDGS_LANGUAGE_TO_ISO = {"jp": "ja", "kr": "ko", "tzh": "zh"}


def ddgs_region(country: str | None) -> str:
    """The ddgs/DuckDuckGo region for an ISO country code (``"GB"`` → ``"uk-en"``).

    Unknown or missing countries get ``"wt-wt"``, DuckDuckGo's "no region".
    """
    if country is None:
        return _DDGS_NO_REGION
    return _DDGS_REGIONS.get(country.upper(), _DDGS_NO_REGION)


def searxng_language(country: str | None) -> str | None:
    """A SearXNG ``language`` value (``"en-GB"``) for an ISO country code, or None if unknown."""
    region = ddgs_region(country)
    if country is None or region == _DDGS_NO_REGION:
        return None
    language = region.split("-")[1]
    return f"{_DDGS_LANGUAGE_TO_ISO.get(language, language)}-{country.upper()}"


class DdgsProvider:
    """Search through the ``ddgs`` library.

    ``backend`` is ddgs's backend list (``"auto"``, ``"duckduckgo"``, ``"bing,brave"``, ...).
    ``duckduckgo_url`` replaces the URL of DuckDuckGo's HTML endpoint
    (``https://html.duckduckgo.com/html/``) and restricts the search to ddgs's ``duckduckgo``
    engine; it exists so tests can point ddgs at a loopback stand-in. The override is applied to
    an engine instance of our own (``search_url`` is an instance attribute of ddgs's engines), not
    to ddgs's shared classes, so concurrent searches elsewhere are unaffected.
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        timeout: int = 8,
        proxy: str | None = None,
        duckduckgo_url: str | None = None,
    ) -> None:
        if duckduckgo_url is not None and backend not in ("auto", "duckduckgo"):
            raise ValueError("duckduckgo_url applies to the duckduckgo backend only")
        self._backend = backend
        self._timeout = timeout
        self._proxy = proxy
        self._duckduckgo_url = duckduckgo_url

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        """Search in a worker thread; cancelling abandons the thread (ddgs's timeout bounds it)."""
        results = await anyio.to_thread.run_sync(
            self._search_blocking, request, abandon_on_cancel=True
        )
        return _finish(request, results)

    def _search_blocking(self, request: SearchRequest) -> list[SearchResult]:
        region = ddgs_region(request.region)
        try:
            if self._duckduckgo_url is None:
                hits = DDGS(proxy=self._proxy, timeout=self._timeout).text(
                    request.provider_query,
                    region=region,
                    safesearch=request.safesearch,
                    max_results=request.max_results,
                    backend=self._backend,
                )
                return [
                    SearchResult(h.get("title", ""), h.get("href", ""), h.get("body", ""))
                    for h in hits
                ]
            engine = Duckduckgo(proxy=self._proxy, timeout=self._timeout)
            engine.search_url = self._duckduckgo_url
            found = engine.search(
                request.provider_query, region=region, safesearch=request.safesearch
            )
        except RatelimitException as exc:
            raise SearchError(f"Web search is rate-limited right now ({exc}).") from exc
        except TimeoutException as exc:
            raise SearchError(f"Web search timed out ({exc}).") from exc
        except DDGSException as exc:
            # ddgs reports an empty result set as this exception, not as an empty list.
            if str(exc) == "No results found.":
                return []
            raise SearchError(f"Web search failed: {exc}") from exc
        if found is None:  # the engine got a non-200 answer
            raise SearchError("Web search failed: DuckDuckGo answered with an error status.")
        return [SearchResult(r.title, r.href, r.body) for r in found]


class SearxngProvider:
    """Search through a SearXNG instance's JSON API (``GET {base_url}/search?format=json``)."""

    def __init__(self, base_url: str, *, timeout: float = 8.0) -> None:
        self._search_url = f"{base_url.rstrip('/')}/search"
        self._timeout = timeout
        # Building an SSL context (loading the CA bundle) costs about 30 ms: once, not per search.
        self._ssl_context = ssl.create_default_context()

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        """Query SearXNG; HTTP errors, timeouts and malformed replies raise ``SearchError``."""
        params = {
            "q": request.provider_query,
            "format": "json",
            "safesearch": {"off": "0", "moderate": "1", "on": "2"}[request.safesearch],
        }
        if language := searxng_language(request.region):
            params["language"] = language
        try:
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._ssl_context) as client:
                response = await client.get(self._search_url, params=params)
            response.raise_for_status()
            document = response.json()
        except httpx.TimeoutException as exc:
            raise SearchError(f"Web search timed out ({type(exc).__name__}).") from exc
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            hint = " (is format=json enabled on the SearXNG instance?)" if status == 403 else ""
            raise SearchError(f"Web search failed: SearXNG answered HTTP {status}{hint}.") from exc
        except httpx.HTTPError as exc:
            raise SearchError(f"Web search failed: could not reach SearXNG ({exc}).") from exc
        except ValueError as exc:  # the body is not JSON
            raise SearchError("Web search failed: SearXNG did not answer JSON.") from exc
        return _finish(request, _parse_searxng(document))


def _parse_searxng(document: object) -> list[SearchResult]:
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise SearchError("Web search failed: SearXNG's answer has no result list.")
    return [
        SearchResult(
            title=str(hit.get("title") or hit["url"]),
            url=str(hit["url"]),
            snippet=str(hit.get("content") or ""),
        )
        for hit in document["results"]
        if isinstance(hit, dict) and isinstance(hit.get("url"), str)
    ]
