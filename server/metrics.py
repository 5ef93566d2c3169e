"""The server's Prometheus metrics (``GET /metrics``), every name prefixed ``exloop_``.

One :class:`Metrics` per server holds its own registry (so servers built in one process, as
the tests build them, never share counts). It is the orchestrator's
:class:`~exloop.orchestrator.telemetry.Telemetry` (token timing, token counts, tool calls,
finished responses); the gateway records each HTTP request; the search provider and page
fetcher are wrapped to time them; runs queued and running, responses stored and the engine's
load (jobs in its batch and waiting for a place, KV cache use) are read from the orchestrator
at each scrape, so no second tally can drift.

Labels are bounded: ``endpoint`` is a route's pattern (``/v1/responses/{response_id}``) or
``unmatched``, ``tool`` a built-in tool's name or ``function``, never a client's string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _exposition
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exloop.engine.protocol import EngineStats
from exloop.orchestrator.record import ResponseRecord
from exloop.orchestrator.service import RunCounts
from exloop.tools.fetch import FetchedPage, PageFetcher
from exloop.tools.web_search import SearchProvider, SearchRequest, SearchResult

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_GAP = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
_WEB = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._requests = Counter(
            "exloop_http_requests",
            "HTTP requests answered, by endpoint (route pattern), method and status.",
            ("endpoint", "method", "status"),
            registry=registry,
        )
        self._request_seconds = Histogram(
            "exloop_http_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer (a stream's end).",
            ("endpoint", "method"),
            buckets=_SECONDS,
            registry=registry,
        )
        self._first_token = Histogram(
            "exloop_time_to_first_token_seconds",
            "Time from a response's acceptance to its first output token.",
            buckets=_SECONDS,
            registry=registry,
        )
        self._inter_token = Histogram(
            "exloop_inter_token_latency_seconds",
            "Time between consecutive output tokens of one generation.",
            buckets=_TOKEN_GAP,
            registry=registry,
        )
        self._prompt_tokens = Counter(
            "exloop_prompt_tokens", "Prompt tokens of finished responses.", registry=registry
        )
        self._completion_tokens = Counter(
            "exloop_completion_tokens",
            "Output tokens of finished responses.",
            registry=registry,
        )
        self._cached_tokens = Counter(
            "exloop_cached_tokens",
            "Prompt tokens reused from the KV cache.",
            registry=registry,
        )
        self._responses = Counter(
            "exloop_responses",
            "Responses finished (both APIs), by final status.",
            ("status",),
            registry=registry,
        )
        self._tool_calls = Counter(
            "exloop_tool_calls",
            "Tool calls the model made, by tool (a built-in tool, 'function' or 'custom' for a "
            "client function or custom tool, 'tool_search') and outcome (the call item's final "
            "status).",
            ("tool", "outcome"),
            registry=registry,
        )
        self._search_seconds = Histogram(
            "exloop_web_search_duration_seconds",
            "Time the search provider took to answer one query.",
            buckets=_WEB,
            registry=registry,
        )
        self._fetch_seconds = Histogram(
            "exloop_page_fetch_duration_seconds",
            "Time one page fetch took (redirects included; failed fetches too).",
            buckets=_WEB,
            registry=registry,
        )

    def watch(self, counts: Callable[[], RunCounts], engine: Callable[[], EngineStats]) -> None:
        """Report the orchestrator's ``counts()`` and the engine's load (``engine()``) as
        gauges at each scrape."""
        self.registry.register(_LoadGauges(counts, engine))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return _exposition(self.registry)

    # -- HTTP (the gateway) ---------------------------------------------------------------

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, method, str(status)).inc()
        self._request_seconds.labels(endpoint, method).observe(seconds)

    # -- the orchestrator's Telemetry -----------------------------------------------------

    def first_token(self, seconds: float) -> None:
        self._first_token.observe(seconds)

    def inter_token(self, seconds: float, tokens: int) -> None:
        for _ in range(tokens):
            self._inter_token.observe(seconds)

    def tool_call(self, tool: str, outcome: str) -> None:
        self._tool_calls.labels(tool, outcome).inc()

    def run_finished(self, record: ResponseRecord, seconds: float) -> None:
        usage = record.usage
        self._prompt_tokens.inc(usage.input_tokens)
        self._completion_tokens.inc(usage.output_tokens)
        self._cached_tokens.inc(usage.cached_tokens)
        self._responses.labels(record.status).inc()

    # -- the web tools --------------------------------------------------------------------

    def timed_provider(self, provider: SearchProvider) -> SearchProvider:
        return _TimedProvider(provider, self._search_seconds)

    def timed_fetcher(self, fetcher: PageFetcher) -> PageFetcher:
        return _TimedFetcher(fetcher, self._fetch_seconds)


class _LoadGauges:
    """Runs queued and running and responses stored, read from the orchestrator, and the
    engine's load: jobs in its batch and waiting for a place, and its KV cache."""

    def __init__(self, counts: Callable[[], RunCounts], engine: Callable[[], EngineStats]) -> None:
        self._counts = counts
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return self._families(RunCounts(0, 0, 0), EngineStats(0, 0, 0, 0, 0))

    def collect(self) -> Iterable[Metric]:
        return self._families(self._counts(), self._engine())

    @staticmethod
    def _families(counts: RunCounts, engine: EngineStats) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "exloop_jobs_queued", "Responses accepted and waiting to run.", counts.queued
        )
        yield GaugeMetricFamily(
            "exloop_jobs_running",
            "Responses running now (generating or running tools).",
            counts.running,
        )
        yield GaugeMetricFamily(
            "exloop_stored_responses", "Responses in the response store.", counts.stored
        )
        yield GaugeMetricFamily(
            "exloop_engine_jobs_running",
            "Generation jobs in the engine's batch now.",
            engine.running,
        )
        yield GaugeMetricFamily(
            "exloop_engine_jobs_queued",
            "Generation jobs waiting for a place in the engine's batch (first come, first served).",
            engine.queued,
        )
        yield GaugeMetricFamily(
            "exloop_engine_parallel", "Jobs the engine generates together at most.", engine.parallel
        )
        yield GaugeMetricFamily(
            "exloop_engine_cache_tokens_used",
            "KV cache tokens in use: running jobs and the prefixes kept for reuse.",
            engine.cache_used,
        )
        yield GaugeMetricFamily(
            "exloop_engine_cache_tokens", "KV cache tokens in all.", engine.cache_size
        )


class _TimedProvider:
    def __init__(self, provider: SearchProvider, seconds: Histogram) -> None:
        self._provider = provider
        self._seconds = seconds

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        with self._seconds.time():
            return await self._provider.search(request)


class _TimedFetcher:
    def __init__(self, fetcher: PageFetcher, seconds: Histogram) -> None:
        self._fetcher = fetcher
        self._seconds = seconds

    async def fetch(self, url: str) -> FetchedPage:
        with self._seconds.time():
            return await self._fetcher.fetch(url)
