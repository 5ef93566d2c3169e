"""Main-text extraction: markdown with headings and absolute links, boilerplate gone."""

from __future__ import annotations

import pytest

from exloop.tools.extract import ExtractedPage, extract, extract_blocking
from exloop.tools.fetch import FetchedPage
from tests.fixtures.articles import ARTICLES, PLAIN_NOTES

URL = "https://gazette.example/articles/honeybees"


def _page(content_type: str, text: str, url: str = URL) -> FetchedPage:
    return FetchedPage(url=url, final_url=url, status=200, content_type=content_type, text=text)


def test_html_becomes_markdown_without_boilerplate() -> None:
    page = extract_blocking(_page("text/html", ARTICLES[0].html()))
    assert page.url == URL
    assert page.title == "How honeybees share directions: the waggle dance"
    assert "## Angle and duration" in page.text
    assert "one second of waggling corresponds to about one kilometre" in page.text
    # Relative links are kept, made absolute against the page URL.
    assert "[all articles](https://gazette.example/articles/index)" in page.text
    for clutter in ("Subscribe to our newsletter", "All rights reserved", "Ten tricks"):
        assert clutter not in page.text


def test_plain_text_and_json_pass_through() -> None:
    notes = extract_blocking(_page("text/plain", PLAIN_NOTES + "\n\n\n\n"))
    assert notes == ExtractedPage(url=URL, title="", text=PLAIN_NOTES.strip())
    assert extract_blocking(_page("application/json", '{"a": 1}')).text == '{"a": 1}'


def test_a_page_too_small_for_trafilatura_still_yields_its_text() -> None:
    html = "<html><head><title>Tiny</title></head><body><p>Only this.</p></body></html>"
    page = extract_blocking(_page("text/html", html))
    assert page.text == "Only this."


@pytest.mark.anyio
async def test_extract_runs_in_a_worker_thread() -> None:
    page = await extract(_page("text/html", ARTICLES[2].html()))
    assert page.title == "What causes the ocean tides"
    assert "Bay of Fundy" in page.text
