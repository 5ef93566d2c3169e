"""Choosing what the model reads: split pages into chunks, rank them by BM25, pack a budget.

A small model has a small context, so the tool hands it the few passages that best match the
query rather than whole pages. Pages (markdown from ``extract``) are split at paragraphs and
headings into chunks of about 100-200 words, every chunk of every page is scored against the
query with Okapi BM25 (the page set is the corpus, so a word common to all pages weighs little),
and the best chunks are packed into a token budget.

The budget comes from OpenAI's ``search_context_size``:

    low     1,000 tokens
    medium  3,000 tokens   (OpenAI's default)
    high    6,000 tokens

The BM25 here is our own (about 30 lines): for the few dozen chunks of one search it takes well
under a millisecond, where ``bm25s`` spends about 4 ms building its sparse index and needs the
query tokenized against the corpus vocabulary.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONTEXT_BUDGETS",
    "Chunk",
    "ContextSize",
    "RankedChunk",
    "approx_tokens",
    "pack",
    "rank_chunks",
    "split_chunks",
]

ContextSize = Literal["low", "medium", "high"]

#: Token budget of the text shown to the model, per ``search_context_size``.
CONTEXT_BUDGETS: dict[ContextSize, int] = {"low": 1000, "medium": 3000, "high": 6000}

TokenCounter = Callable[[str], int]

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")
# Words too common to tell chunks apart; BM25's IDF discounts them anyway, but with a corpus of
# a few dozen chunks the discount is weak.
_STOPWORD_TEXT = (
    "a an and are as at be but by can do does for from has have how i if in into is it its of on "
    "or so than that the their them then there these they this to was we were what when where "
    "which who why will with you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate: about four characters per token for English text."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Chunk:
    """A piece of one page: ``source`` is the page's index, ``position`` the chunk's order in it.

    ``heading`` is the nearest heading above the chunk (scored with it, as context).
    """

    source: int
    position: int
    heading: str
    text: str


@dataclass(frozen=True)
class RankedChunk:
    """A chunk with its BM25 score against the query (0 when no query word occurs in it)."""

    chunk: Chunk
    score: float


def _words(text: str) -> int:
    return len(text.split())


def _pieces(block: str, max_words: int) -> Iterable[str]:
    """Cut a block longer than ``max_words`` at sentence ends (at words if a sentence is longer)."""
    if _words(block) <= max_words:
        yield block
        return
    current: list[str] = []
    for sentence in _SENTENCE_END.split(block):
        words = sentence.split()
        while len(words) > max_words:
            if current:
                yield " ".join(current)
                current = []
            yield " ".join(words[:max_words])
            words = words[max_words:]
        if current and len(current) + len(words) > max_words:
            yield " ".join(current)
            current = []
        current.extend(words)
    if current:
        yield " ".join(current)


def split_chunks(
    text: str, *, source: int = 0, min_words: int = 80, max_words: int = 200
) -> list[Chunk]:
    """Split markdown into chunks of whole paragraphs, about ``max_words`` words at most.

    Paragraphs (blank-line separated blocks) are gathered until the next would pass
    ``max_words``; a heading starts a new chunk once the current one has ``min_words``, so short
    sections merge with their neighbours instead of becoming crumbs. Heading lines stay with the
    paragraph that follows them.
    """
    chunks: list[Chunk] = []
    heading = ""  # the latest heading seen
    chunk_heading = ""  # the heading in force where the current chunk began
    current: list[str] = []
    count = 0
    pending: list[str] = []  # heading lines waiting for their first paragraph

    def flush() -> None:
        nonlocal current, count
        if current:
            chunks.append(Chunk(source, len(chunks), chunk_heading, "\n\n".join(current)))
        current, count = [], 0

    def add(piece: str) -> None:
        nonlocal count, chunk_heading
        words = _words(piece)
        if current and count + words > max_words:
            flush()
        if not current:
            chunk_heading = heading
        current.append(piece)
        count += words

    for block in (b.strip() for b in text.split("\n\n")):
        if not block:
            continue
        if match := _HEADING.match(block):
            if count >= min_words:
                flush()
            heading = match.group(1).strip()
            pending.append(block)
            continue
        for piece in _pieces(block, max_words):
            add("\n\n".join([*pending, piece]))
            pending = []
    if pending:
        add("\n\n".join(pending))
    flush()
    return chunks


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def rank_chunks(
    query: str, chunks: Sequence[Chunk], *, k1: float = 1.2, b: float = 0.75
) -> list[RankedChunk]:
    """Score every chunk against ``query`` with Okapi BM25; best first.

    Ties, including the chunks no query word reaches (score 0), keep page order and then the
    order within the page, so an unmatched tail reads like the pages from their tops.
    """
    documents = [Counter(_terms(f"{c.heading} {c.text}")) for c in chunks]
    lengths = [sum(d.values()) for d in documents]
    average = (sum(lengths) / len(lengths)) if lengths else 0.0
    query_terms = set(_terms(query))
    total = len(documents)
    idf = {
        term: math.log1p((total - df + 0.5) / (df + 0.5))
        for term in query_terms
        if (df := sum(1 for d in documents if term in d))
    }
    ranked = []
    for chunk, document, length in zip(chunks, documents, lengths, strict=True):
        norm = k1 * (1 - b + b * length / average) if average else k1
        score = math.fsum(
            weight * document[term] * (k1 + 1) / (document[term] + norm)
            for term, weight in idf.items()
            if term in document
        )
        ranked.append(RankedChunk(chunk, score))
    ranked.sort(key=lambda r: (-r.score, r.chunk.source, r.chunk.position))
    return ranked


def pack(
    ranked: Iterable[RankedChunk],
    budget: int,
    *,
    count_tokens: TokenCounter = approx_tokens,
    separator: str = "",
) -> list[RankedChunk]:
    """Take chunks in rank order while they fit in ``budget`` tokens.

    A chunk that does not fit is skipped and smaller ones further down may still fill the gap.
    Each chunk is charged with ``separator`` (what will join the chunks in the rendered text)
    prepended, so the joined text stays within the budget. Returns the chosen chunks in rank
    order.
    """
    chosen: list[RankedChunk] = []
    used = 0
    for item in ranked:
        cost = count_tokens(separator + item.chunk.text)
        if used + cost <= budget:
            chosen.append(item)
            used += cost
    return chosen
