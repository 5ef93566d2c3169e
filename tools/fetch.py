"""Fetching web pages for the model without letting it reach internal addresses.

The model chooses the URLs (through search results or ``open``), so every URL is untrusted: a page
can redirect to ``http://169.254.169.254/`` or name a host whose DNS answer is ``10.0.0.1``. The
fetcher therefore

* accepts only absolute ``http``/``https`` URLs;
* resolves the host itself (``anyio.getaddrinfo``) and refuses the hop if any address is loopback,
  private, link-local, multicast, reserved, unspecified, not globally routable, or a cloud metadata
  endpoint, judging IPv4-mapped, 6to4 and Teredo IPv6 forms by the IPv4 address they carry;
* connects to the address it checked, not to the name: the request goes to the IP with the
  original ``Host`` header and, for https, the original name as TLS SNI (httpx's ``sni_hostname``
  extension), so certificates are still verified against the name and a second DNS answer
  (DNS rebinding) cannot redirect the connection;
* follows redirects itself, repeating all of the above on every hop, up to ``max_redirects``;
* streams the body and stops at ``max_bytes`` (counted after content decoding), and accepts only
  HTML, text, XML and JSON content types;
* bounds the whole fetch, redirects included, by ``timeout`` seconds.

Environment proxies are ignored (``trust_env=False``): a proxy would resolve names on its own and
void the pinning.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx

from .errors import (
    BlockedAddress,
    FetchError,
    FetchFailed,
    FetchTimeout,
    FetchTooLarge,
    HttpStatusError,
    InvalidUrl,
    TooManyRedirects,
    UnsupportedContent,
)

__all__ = [
    "BlockedAddress",
    "FetchError",
    "FetchFailed",
    "FetchTimeout",
    "FetchTooLarge",
    "FetchedPage",
    "HttpStatusError",
    "InvalidUrl",
    "SafeFetcher",
    "TooManyRedirects",
    "UnsupportedContent",
    "is_blocked_address",
    "resolve_host",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Metadata services answer on ordinary-looking addresses; the first two are link-local or
# unique-local anyway, listed so the intent survives any change in `ipaddress`'s tables.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TEXT_SUBTYPES = frozenset({"html", "xhtml+xml", "xml", "json", "rss+xml", "atom+xml", "ld+json"})
_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,text/plain;q=0.8,*/*;q=0.1"
DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; exloop-web-research/0.1)"


@dataclass(frozen=True)
class FetchedPage:
    """A fetched text resource.

    ``url`` is the URL asked for, ``final_url`` the one that answered after redirects;
    ``content_type`` is the bare media type (``text/html``) and ``text`` the decoded body.
    """

    url: str
    final_url: str
    status: int
    content_type: str
    text: str


def is_blocked_address(address: IPAddress) -> bool:
    """Whether the SSRF guard refuses to connect to ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # A mapped address *is* its IPv4 address: judge it by that alone.
            return is_blocked_address(address.ipv4_mapped)
        # 6to4 and Teredo addresses carry an IPv4 endpoint that relays may deliver to.
        embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and is_blocked_address(embedded):
            return True
    return (
        address in _METADATA_ADDRESSES
        or not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve_host(
    host: str, port: int | None, url: str, *, guarded: bool, action: str = "fetch"
) -> list[str]:
    """The addresses of ``host``; with ``guarded``, refused (``BlockedAddress``) if any of them
    is internal. ``url`` and ``action`` ("fetch", "connect to") word the error messages.
    Callers connect to the returned addresses, never to the name again, so a second DNS answer
    cannot slip past the check."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchFailed(f"Could not resolve the host of {url}: {exc}", url) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if guarded:
        for address in addresses:
            if is_blocked_address(ipaddress.ip_address(address.partition("%")[0])):
                raise BlockedAddress(
                    f"Refused to {action} {url}: its host resolves to the internal address "
                    f"{address}.",
                    url,
                )
    if not addresses:
        raise FetchFailed(f"The host of {url} has no addresses.", url)
    return addresses


def _is_textual(media_type: str) -> bool:
    kind, _, subtype = media_type.partition("/")
    if kind == "text":
        return True
    return kind == "application" and (
        subtype in _TEXT_SUBTYPES or subtype.endswith("+xml") or subtype.endswith("+json")
    )


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidUrl(f"Invalid URL {str(url)!r}: {exc}", str(url)) from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidUrl(f"Only http and https URLs can be fetched, not {str(url)!r}.", str(url))
    if not parsed.raw_host:
        raise InvalidUrl(f"The URL {str(url)!r} has no host.", str(url))
    if parsed.userinfo:
        raise InvalidUrl(f"URLs with credentials are not fetched: {str(url)!r}.", str(url))
    return parsed.copy_with(fragment=None)


class PageFetcher(Protocol):
    """Fetches a page by URL (``SafeFetcher``, or one wrapped to measure it)."""

    async def fetch(self, url: str) -> FetchedPage: ...


class SafeFetcher:
    """Fetches untrusted URLs with an SSRF guard, size and type limits and bounded redirects.

    ``allow_private`` turns the address check off entirely (tests, intranet deployments);
    ``trusted_hosts`` turns it off for the named hosts only (say, a local SearXNG), matched
    case-insensitively against the URL's host. Connections are pinned to the resolved address
    either way. ``ssl_context`` replaces the system's certificate authorities (a private CA).
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        max_bytes: int = 2_000_000,
        max_redirects: int = 5,
        trusted_hosts: Iterable[str] = (),
        user_agent: str = DEFAULT_USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if timeout <= 0 or max_bytes <= 0 or max_redirects < 0:
            raise ValueError("timeout and max_bytes must be positive, max_redirects non-negative")
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.trusted_hosts = frozenset(host.lower().strip("[]") for host in trusted_hosts)
        self._user_agent = user_agent
        # Loading the CA bundle costs tens of milliseconds; do it once, not per fetch.
        self._ssl_context = ssl_context or ssl.create_default_context()

    async def fetch(self, url: str) -> FetchedPage:
        """Fetch ``url``, following redirects, and return its decoded text.

        Raises a ``FetchError`` subclass for anything that stops the fetch.
        """
        try:
            with anyio.fail_after(self.timeout):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise FetchTimeout(f"Fetching {url} took longer than {self.timeout:g} s.", url) from exc

    async def _fetch(self, url: str) -> FetchedPage:
        current = _parse_url(url)
        async with httpx.AsyncClient(
            verify=self._ssl_context,
            trust_env=False,
            follow_redirects=False,
            timeout=self.timeout,
            headers={"User-Agent": self._user_agent, "Accept": _ACCEPT},
        ) as client:
            for _ in range(self.max_redirects + 1):
                response = await self._send(client, current)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        current = self._redirect_target(current, location)
                        continue
                    return await self._read(url, current, response)
                finally:
                    await response.aclose()
        raise TooManyRedirects(
            f"{url} redirected more than {self.max_redirects} times.", str(current)
        )

    def _redirect_target(self, current: httpx.URL, location: str) -> httpx.URL:
        try:
            target = current.join(location)
        except httpx.InvalidURL as exc:
            raise InvalidUrl(
                f"{current} redirected to an invalid URL {location!r}.", str(current)
            ) from exc
        return _parse_url(target)

    async def _resolve(self, url: httpx.URL) -> list[str]:
        """The addresses to connect to for ``url``, after the guard has approved all of them."""
        host = url.raw_host.decode("ascii")
        guarded = not self.allow_private and host.lower() not in self.trusted_hosts
        return await resolve_host(host, url.port, str(url), guarded=guarded)

    async def _send(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Response:
        """Send a GET for ``url`` to one of its checked addresses; return the streaming response."""
        addresses = await self._resolve(url)
        headers = {"Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        last_error: httpx.TransportError | None = None
        for address in addresses:
            request = client.build_request(
                "GET", url.copy_with(host=address), headers=headers, extensions=extensions
            )
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                # Try the host's next address, as a browser would.
                last_error = exc
            except httpx.TimeoutException as exc:
                raise FetchTimeout(f"Fetching {url} timed out: {exc}", str(url)) from exc
            except httpx.HTTPError as exc:
                raise FetchFailed(f"Fetching {url} failed: {exc}", str(url)) from exc
        raise FetchFailed(f"Could not connect to {url}: {last_error}", str(url)) from last_error

    async def _read(self, asked: str, url: httpx.URL, response: httpx.Response) -> FetchedPage:
        if response.status_code >= 400:
            raise HttpStatusError(
                f"{url} answered HTTP {response.status_code} {response.reason_phrase}.",
                str(url),
                response.status_code,
            )
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not _is_textual(media_type):
            shown = media_type or "no content type"
            raise UnsupportedContent(f"{url} is not a text page ({shown}).", str(url))
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchTooLarge(self._too_large(url), str(url))
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchTooLarge(self._too_large(url), str(url))
        except httpx.TimeoutException as exc:
            raise FetchTimeout(f"Reading {url} timed out: {exc}", str(url)) from exc
        except httpx.HTTPError as exc:
            raise FetchFailed(f"Reading {url} failed: {exc}", str(url)) from exc
        return FetchedPage(
            url=asked,
            final_url=str(url),
            status=response.status_code,
            content_type=media_type,
            text=_decode(bytes(body), response.charset_encoding),
        )

    def _too_large(self, url: httpx.URL) -> str:
        return f"{url} is larger than the {self.max_bytes}-byte limit."


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name in the header
        return body.decode("utf-8", errors="replace")
