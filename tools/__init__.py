"""exloop.tools: the capabilities behind the built-in tools, with no knowledge of the API.

- ``web_search``: search providers (ddgs, SearXNG) behind ``SearchProvider``.
- ``fetch``: ``SafeFetcher``, page fetching with an SSRF guard, size, type and redirect limits.
- ``extract``: main-text extraction to markdown (trafilatura).
- ``rank``: chunking, BM25 ranking and token-budget packing.
- ``research``: ``WebResearch``, the facade the orchestrator calls.
- ``errors``: the error tree; every message is written for the model to read.
"""
