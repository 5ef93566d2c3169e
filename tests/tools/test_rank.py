"""Chunking, BM25 ranking and budget packing."""

from __future__ import annotations

from exloop.tools.extract import extract_blocking
from exloop.tools.fetch import FetchedPage
from exloop.tools.rank import (
    CONTEXT_BUDGETS,
    Chunk,
    RankedChunk,
    approx_tokens,
    pack,
    rank_chunks,
    split_chunks,
)
from tests.fixtures.articles import ARTICLES


def _corpus() -> list[Chunk]:
    chunks = []
    for number, article in enumerate(ARTICLES, start=1):
        url = f"https://gazette.example/{article.slug}"
        page = FetchedPage(url, url, 200, "text/html", article.html())
        chunks.extend(split_chunks(extract_blocking(page).text, source=number))
    return chunks


def test_chunks_keep_paragraphs_whole_and_headings_with_their_text() -> None:
    paragraphs = [" ".join(f"w{p}x{i}" for i in range(70)) for p in range(5)]
    text = (
        "# Title\n\n"
        + "\n\n".join(paragraphs[:2])
        + "\n\n## Next\n\n"
        + "\n\n".join(paragraphs[2:])
    )
    chunks = split_chunks(text, source=3, min_words=80, max_words=150)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.source == 3 for c in chunks)
    assert all(len(c.text.split()) <= 152 for c in chunks)  # headings ride along with a paragraph
    assert chunks[0].text.startswith("# Title\n\n" + paragraphs[0])
    nexts = [c for c in chunks if "## Next" in c.text]
    assert len(nexts) == 1 and nexts[0].text.startswith("## Next\n\n" + paragraphs[2])
    assert nexts[0].heading == "Next"
    # Every paragraph survives exactly once.
    joined = "\n\n".join(c.text for c in chunks)
    assert all(joined.count(p) == 1 for p in paragraphs)


def test_a_long_paragraph_is_cut_at_sentences() -> None:
    sentence = "The quick brown fox jumps over the lazy dog near the river bank today."
    chunks = split_chunks(" ".join([sentence] * 40), max_words=100)
    assert len(chunks) > 1
    assert all(len(c.text.split()) <= 100 for c in chunks)
    assert all(c.text.endswith("today.") for c in chunks)


def test_short_sections_merge() -> None:
    text = "## A\n\nalpha beta gamma.\n\n## B\n\ndelta epsilon.\n\n## C\n\nzeta eta."
    (chunk,) = split_chunks(text)
    assert chunk.heading == "A"
    assert "## C" in chunk.text


def test_the_relevant_chunk_ranks_first() -> None:
    ranked = rank_chunks("largest tidal range in the world", _corpus())
    assert "Bay of Fundy" in ranked[0].chunk.text
    assert ranked[0].score > ranked[1].score

    ranked = rank_chunks("how long does the waggle run last per kilometre", _corpus())
    assert "one second of waggling" in ranked[0].chunk.text


def test_unmatched_chunks_score_zero_in_page_order() -> None:
    corpus = _corpus()
    ranked = rank_chunks("xylophone", corpus)
    assert all(r.score == 0 for r in ranked)
    assert [r.chunk for r in ranked] == corpus


def test_pack_respects_the_budget_and_fills_gaps() -> None:
    def chunk(position: int, words: int) -> RankedChunk:
        return RankedChunk(Chunk(1, position, "", " ".join(["word"] * words)), 10.0 - position)

    ranked = [chunk(0, 100), chunk(1, 300), chunk(2, 50)]
    chosen = pack(ranked, 200, count_tokens=lambda text: len(text.split()))
    assert [c.chunk.position for c in chosen] == [0, 2]  # the 300-word chunk is skipped

    chosen = pack(_ranked_corpus(), 1000, separator="\n\n")
    assert sum(approx_tokens("\n\n" + c.chunk.text) for c in chosen) <= 1000
    assert len(chosen) < len(_ranked_corpus())
    assert pack(ranked, 10, count_tokens=lambda text: len(text.split())) == []


def _ranked_corpus() -> list[RankedChunk]:
    return rank_chunks("honeybee dance", _corpus())


def test_budgets() -> None:
    assert CONTEXT_BUDGETS == {"low": 1000, "medium": 3000, "high": 6000}
    assert approx_tokens("") == 0
    assert approx_tokens("abcde") == 2
