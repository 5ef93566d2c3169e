"""Turning a fetched page into readable text: the main content as markdown, links kept.

HTML goes through trafilatura, which drops menus, sidebars and footers and keeps headings, lists,
emphasis and links as markdown (relative links made absolute against the page URL). Plain text,
JSON and XML are passed through with their whitespace tidied. Extraction is CPU work (tens of
milliseconds for an ordinary page, more for a big one) and runs in a worker thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio
import trafilatura
from trafilatura.settings import Document

from .fetch import FetchedPage

__all__ = ["ExtractedPage", "extract", "extract_blocking"]

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


@dataclass(frozen=True)
class ExtractedPage:
    """A page's readable content: ``text`` is markdown for HTML pages, as served otherwise.

    ``url`` is the page's final URL; ``title`` is empty when the page names none.
    """

    url: str
    title: str
    text: str


async def extract(page: FetchedPage) -> ExtractedPage:
    """Extract ``page`` in a worker thread.

    A cancelled caller does not wait for the thread: the extraction finishes in the background
    and its result is dropped.
    """
    return await anyio.to_thread.run_sync(extract_blocking, page, abandon_on_cancel=True)


def extract_blocking(page: FetchedPage) -> ExtractedPage:
    """Extract ``page`` on the calling thread."""
    if page.content_type in _HTML_TYPES:
        return _extract_html(page)
    return ExtractedPage(url=page.final_url, title="", text=_tidy(page.text))


def _extract_html(page: FetchedPage) -> ExtractedPage:
    # bare_extraction gives the title and the body in one parse; output_format="python" with
    # include_formatting renders the body as markdown (what extract(output_format="markdown")
    # returns, minus its YAML metadata header).
    document = trafilatura.bare_extraction(
        page.text,
        url=page.final_url,
        output_format="python",
        include_formatting=True,
        include_links=True,
        include_images=False,
        include_comments=False,
        with_metadata=True,
    )
    title = ""
    if isinstance(document, Document):  # None when trafilatura finds no main content
        title = document.title or ""
        if document.text:
            return ExtractedPage(url=page.final_url, title=title, text=_tidy(document.text))
    # trafilatura finds no main content in very short or unusual pages; its baseline extractor
    # still returns the visible paragraphs.
    _, text, _ = trafilatura.baseline(page.text)
    return ExtractedPage(url=page.final_url, title=title, text=_tidy(text))


def _tidy(text: str) -> str:
    """Strip trailing spaces and collapse runs of blank lines to one."""
    lines = "\n".join(line.rstrip() for line in text.strip().splitlines())
    return _BLANK_LINES.sub("\n\n", lines)
