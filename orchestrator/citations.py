"""The sources a response's model has read, and the ``url_citation`` annotations of its answer.

:class:`SourceLedger` numbers every page the built-in web tools showed the model, once per URL
across the whole response, so ``[3]`` means the same page in every tool result and in the final
answer. :meth:`SourceLedger.cite` then annotates the answer by this rule:

1. **Explicit citations.** Each ``[n]`` marker (also ``[1, 2]``) whose number the model was
   shown cites that source, the span being the marker; a source's URL or title written in the
   text (the title case-insensitively) cites it over that span.
2. **Paraphrase, when there is no explicit citation.** Small models often answer from the
   sources without writing a marker. Then each sentence of the answer cites the source it shares
   the most content words with (words of four or more letters, common ones left out, a plural
   ``s`` ignored), if it shares at least :data:`MIN_SHARED_WORDS` of them with what the model
   read of that source and at least one of those is not a word of the user's question (a
   sentence that only restates the question claims nothing from the page); neighbouring
   sentences citing the same source become one span.

A number the model was never shown, and a sentence that matches no source well enough, cite
nothing: an annotation always points at a page the model actually read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .items import UrlCitation

#: Shared content words a sentence needs before it is attributed to a source it does not cite.
MIN_SHARED_WORDS = 3

_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# A sentence ends at . ! or ? before whitespace (not inside "127.0.0.1" or "3.5"), or at a line end.
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?](?=\s)|$)", re.MULTILINE)
_URL = re.compile(r"\w+://\S+")
# Where a written URL ends: punctuation at most, then a space, a closing bracket or the end.
_URL_END = r"(?=[.,;:!?]*(?:[\s)\]>\"']|$))"
_WORD = re.compile(r"\w+")
#: Titles shorter than this are too generic to count as a mention when written in the text.
_MIN_TITLE = 12
_COMMON = frozenset({
    "about", "after", "also", "been", "before", "being", "between", "both", "could", "does",
    "each", "from", "have", "here", "into", "just", "like", "made", "make", "many", "more",
    "most", "much", "only", "other", "over", "same", "some", "such", "than", "that", "their",
    "them", "then", "there", "these", "they", "this", "those", "through", "under", "very", "were",
    "what", "when", "where", "which", "while", "will", "with", "would", "your", "because",
    "answer", "question", "source", "sources", "page",
})  # fmt: skip


@dataclass
class LedgerSource:
    """A page the model was shown: its run-wide number, and the text it read of it."""

    number: int
    url: str
    title: str
    read: list[str] = field(default_factory=list)

    def words(self) -> frozenset[str]:
        return content_words(" ".join([self.title, *self.read]))


class SourceLedger:
    """The pages one response's model has seen, numbered from 1 in the order first seen."""

    def __init__(self, question: str | None = None) -> None:
        self._by_url: dict[str, LedgerSource] = {}
        self._asked = content_words(question or "")

    def __len__(self) -> int:
        return len(self._by_url)

    @property
    def sources(self) -> tuple[LedgerSource, ...]:
        return tuple(self._by_url.values())

    def add(self, url: str, title: str, read: str) -> int:
        """Record that the model read ``read`` of the page at ``url``; returns its number."""
        source = self._by_url.get(url)
        if source is None:
            source = LedgerSource(len(self._by_url) + 1, url, title or url)
            self._by_url[url] = source
        if read:
            source.read.append(read)
        return source.number

    def cite(self, text: str) -> list[UrlCitation]:
        """The answer's citations, by the rule in the module's docstring, in text order."""
        if not self._by_url or not text.strip():
            return []
        found = self._explicit(text) or self._paraphrased(text)
        return sorted(found, key=lambda c: (c.start_index, c.end_index, c.url))

    def _explicit(self, text: str) -> list[UrlCitation]:
        by_number = {s.number: s for s in self._by_url.values()}
        found: list[UrlCitation] = []
        taken: list[tuple[int, int]] = []
        for match in _MARKER.finditer(text):
            for number in dict.fromkeys(int(n) for n in match.group(1).split(",")):
                if (source := by_number.get(number)) is not None:
                    found.append(_citation(source, match.start(), match.end()))
                    taken.append(match.span())
        for source in self._by_url.values():
            mentions = [re.escape(source.url) + _URL_END]
            if len(source.title) >= _MIN_TITLE:
                mentions.append(re.escape(source.title))
            for pattern in mentions:
                for match in re.finditer(pattern, text, re.IGNORECASE):
                    start, end = match.span()
                    if not any(start < e and s < end for s, e in taken):
                        found.append(_citation(source, start, end))
                        taken.append((start, end))
        return found

    def _paraphrased(self, text: str) -> list[UrlCitation]:
        words = {s.number: s.words() for s in self._by_url.values()}
        found: list[UrlCitation] = []
        for match in _SENTENCE.finditer(text):
            sentence = match.group().strip()
            if not sentence:
                continue
            start = match.start() + match.group().index(sentence)
            end = start + len(sentence)
            mine = content_words(sentence)
            shared, source = max(
                ((mine & words[s.number], s) for s in self._by_url.values()),
                key=lambda pair: (len(pair[0]), -pair[1].number),
            )
            if len(shared) < MIN_SHARED_WORDS or shared <= self._asked:
                continue
            last = found[-1] if found else None
            if (
                last is not None
                and last.url == source.url
                and not text[last.end_index : start].strip()
            ):
                found[-1] = _citation(source, last.start_index, end)
            else:
                found.append(_citation(source, start, end))
        return found


def content_words(text: str) -> frozenset[str]:
    """The words that carry meaning: four letters or more, not common, without a plural ``s``,
    and none from URLs."""
    words = set()
    # A URL's pieces (scheme, host, port, path) say nothing about what a sentence claims.
    for word in _WORD.findall(_URL.sub(" ", text).casefold()):
        if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        if len(word) >= 4 and word not in _COMMON:
            words.add(word)
    return frozenset(words)


def _citation(source: LedgerSource, start: int, end: int) -> UrlCitation:
    return UrlCitation(url=source.url, title=source.title, start_index=start, end_index=end)
