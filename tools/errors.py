"""The error tree of the built-in tools.

Every failure a tool can meet becomes one of these, with a message written for the model: the
orchestrator shows ``str(error)`` as the tool result instead of failing the response.

    ToolError
    ├── SearchError            the search provider failed (network, HTTP status, bad reply)
    └── FetchError             a page could not be fetched
        ├── InvalidUrl         not an absolute http(s) URL
        ├── BlockedAddress     the host resolves to an address we refuse to reach (SSRF guard)
        ├── TooManyRedirects
        ├── FetchTimeout
        ├── FetchFailed        connection or protocol error
        ├── HttpStatusError    the final response had a 4xx or 5xx status
        ├── FetchTooLarge      the body exceeded the byte cap
        └── UnsupportedContent not HTML, text, XML or JSON
"""

from __future__ import annotations


class ToolError(Exception):
    """Base of every error raised by ``exloop.tools``; its message is meant for the model."""


class SearchError(ToolError):
    """The search provider could not answer."""


class FetchError(ToolError):
    """A page could not be fetched; ``url`` is the URL that failed (possibly a redirect hop)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class InvalidUrl(FetchError):
    """The URL is malformed, relative, or uses a scheme other than http and https."""


class BlockedAddress(FetchError):
    """The host resolves to a loopback, private, link-local or otherwise internal address."""


class TooManyRedirects(FetchError):
    """The redirect chain is longer than the fetcher allows."""


class FetchTimeout(FetchError):
    """The whole fetch (resolution, redirects and body) took longer than the limit."""


class FetchFailed(FetchError):
    """The connection failed or the server broke the HTTP protocol."""


class HttpStatusError(FetchError):
    """The server answered with a client or server error status."""

    def __init__(self, message: str, url: str, status: int) -> None:
        super().__init__(message, url)
        self.status = status


class FetchTooLarge(FetchError):
    """The body is larger than the fetcher's byte cap."""


class UnsupportedContent(FetchError):
    """The content type is not one we can turn into text (HTML, text, XML, JSON)."""
