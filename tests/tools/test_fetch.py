"""SafeFetcher against the loopback web: the SSRF guard on every hop, limits, pinning."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from exloop.tools.fetch import (
    BlockedAddress,
    FetchFailed,
    FetchTimeout,
    FetchTooLarge,
    HttpStatusError,
    InvalidUrl,
    SafeFetcher,
    TooManyRedirects,
    UnsupportedContent,
    is_blocked_address,
)
from tests.fixtures.web import WebFixture

pytestmark = pytest.mark.anyio

OPEN = SafeFetcher(allow_private=True)


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("169.254.169.254", True),
        ("100.100.100.200", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("240.0.0.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fd00:ec2::254", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("2002:a00:1::", True),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
    ],
)
def test_address_policy(address: str, blocked: bool) -> None:
    assert is_blocked_address(ipaddress.ip_address(address)) is blocked


async def test_loopback_is_refused_without_the_flag_and_never_contacted(web: WebFixture) -> None:
    before = len(web.requests)
    with pytest.raises(BlockedAddress, match="127.0.0.1"):
        await SafeFetcher().fetch(web.article_url("tides"))
    assert len(web.requests) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",  # ::ffff:169.254.169.254 in hex
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number, which resolvers accept
        "http://localhost/",
    ],
)
async def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(BlockedAddress):
        await SafeFetcher(timeout=3).fetch(url)


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
    ],
)
async def test_redirect_into_an_internal_address_is_refused(web: WebFixture, target: str) -> None:
    # The fixture is trusted under the name "localhost" only, so the first hop is allowed.
    fetcher = SafeFetcher(trusted_hosts=["localhost"], timeout=3)
    with pytest.raises(BlockedAddress) as caught:
        await fetcher.fetch(web.url(f"/redirect?to={target}", host="localhost"))
    assert httpx.URL(caught.value.url).host == httpx.URL(target).host  # refused at the second hop


async def test_redirect_to_loopback_by_another_name_is_refused(web: WebFixture) -> None:
    fetcher = SafeFetcher(trusted_hosts=["localhost"])
    target = web.article_url("tides")  # same server, but named 127.0.0.1, which is not trusted
    before = len(web.requests)
    with pytest.raises(BlockedAddress):
        await fetcher.fetch(web.url(f"/redirect?to={target}", host="localhost"))
    assert [r.path for r in web.requests[before:]] == ["/redirect"]


async def test_trusted_host_and_allow_private_admit_the_fixture(web: WebFixture) -> None:
    page = await SafeFetcher(trusted_hosts=["LOCALHOST"]).fetch(web.url("/notes.txt", "localhost"))
    assert page.content_type == "text/plain"
    assert "clover meadow" in page.text

    page = await OPEN.fetch(web.article_url("tides"))
    assert (page.status, page.content_type) == (200, "text/html")
    assert page.url == page.final_url == web.article_url("tides")
    assert "Bay of Fundy" in page.text


async def test_connection_goes_to_the_checked_address(
    web: WebFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, by the guard; httpx connects to that IP with Host and SNI set."""
    calls: list[str] = []

    async def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        calls.append(host)
        address = {"pinned.test": "127.0.0.1", "rebind.test": "10.0.0.1"}[host]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(anyio, "getaddrinfo", resolve)
    # "pinned.test" does not exist in DNS: the fetch works only if the checked IP is used.
    page = await OPEN.fetch(f"http://pinned.test:{web.port}/articles/tides")
    assert "Bay of Fundy" in page.text
    assert page.final_url == f"http://pinned.test:{web.port}/articles/tides"
    assert web.requests[-1].host == f"pinned.test:{web.port}"
    assert calls == ["pinned.test"]

    with pytest.raises(BlockedAddress, match="10.0.0.1"):
        await SafeFetcher().fetch(f"http://rebind.test:{web.port}/")


async def test_size_cap(web: WebFixture) -> None:
    with pytest.raises(FetchTooLarge):
        await OPEN.fetch(web.url("/huge"))  # streamed, no Content-Length
    with pytest.raises(FetchTooLarge):
        await OPEN.fetch(web.url("/huge?declare=1"))  # refused from the header
    with pytest.raises(FetchTooLarge):
        await SafeFetcher(allow_private=True, max_bytes=500).fetch(web.article_url("tides"))


async def test_only_text_content_types(web: WebFixture) -> None:
    with pytest.raises(UnsupportedContent, match="image/png"):
        await OPEN.fetch(web.url("/binary"))
    page = await OPEN.fetch(web.url("/data.json"))
    assert (page.content_type, page.text) == ("application/json", '{"bees": 3}')


async def test_redirect_limit(web: WebFixture) -> None:
    page = await SafeFetcher(allow_private=True, max_redirects=3).fetch(web.url("/chain/3"))
    assert page.final_url == web.article_url("honeybees")
    assert page.url == web.url("/chain/3")
    with pytest.raises(TooManyRedirects):
        await SafeFetcher(allow_private=True, max_redirects=2).fetch(web.url("/chain/3"))


async def test_error_status(web: WebFixture) -> None:
    with pytest.raises(HttpStatusError) as caught:
        await OPEN.fetch(web.url("/status/404"))
    assert caught.value.status == 404


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/file", "file:///etc/passwd", "/relative/path", "http://u:p@example.com/"],
)
async def test_invalid_urls(url: str) -> None:
    with pytest.raises(InvalidUrl):
        await OPEN.fetch(url)


async def test_timeout_bounds_the_whole_fetch(web: WebFixture) -> None:
    with pytest.raises(FetchTimeout):
        await SafeFetcher(allow_private=True, timeout=0.3).fetch(web.url("/slow?seconds=3"))


async def test_cancellation_stops_a_fetch(web: WebFixture) -> None:
    started = time.monotonic()
    with anyio.move_on_after(0.2) as scope:
        await OPEN.fetch(web.url("/slow?seconds=3"))
    assert scope.cancelled_caught
    assert time.monotonic() - started < 1.0


@pytest.fixture(scope="module")
def tls_web(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WebFixture, ssl.SSLContext]]:
    """The loopback web over https, with a certificate for the name "pinned.test" only."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=pinned.test",
         "-addext", "subjectAltName=DNS:pinned.test"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with WebFixture(tls=server_context) as fixture:
        yield fixture, client_context


async def test_https_is_pinned_and_verified_against_the_name(
    tls_web: tuple[WebFixture, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    web, client_context = tls_web

    async def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(anyio, "getaddrinfo", resolve)
    fetcher = SafeFetcher(allow_private=True, ssl_context=client_context)
    # The connection goes to 127.0.0.1, yet TLS sends and verifies the name.
    page = await fetcher.fetch(f"https://pinned.test:{web.port}/articles/tides")
    assert page.final_url == f"https://pinned.test:{web.port}/articles/tides"
    assert "Bay of Fundy" in page.text
    # Another name on the same address does not match the certificate.
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await fetcher.fetch(f"https://other.test:{web.port}/articles/tides")
