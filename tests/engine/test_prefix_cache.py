"""The KV cell bookkeeping against a stand-in of llama.cpp's unified cache.

``CellMemory`` keeps cells as llama.cpp does (a position and a set of sequence ids each;
``seq_cp`` tags cells, ``seq_rm`` untags them, an untagged cell is free), so every test checks
that :class:`PrefixCache` counts exactly the cells llama.cpp would hold, and that each
sequence holds exactly the positions ``[0, length)``.
"""

from __future__ import annotations

import random

import pytest

from exloop.engine.prefix_cache import CachedSequence, PrefixCache


class CellMemory:
    def __init__(self) -> None:
        self.cells: list[tuple[int, set[int]]] = []

    def decode(self, seq_id: int, start: int, count: int) -> None:
        self.cells.extend((start + i, {seq_id}) for i in range(count))

    def copy(self, source: int, target: int, length: int) -> None:
        for pos, seqs in self.cells:
            if source in seqs and pos < length:
                seqs.add(target)

    def truncate(self, seq_id: int, length: int) -> None:
        for pos, seqs in self.cells:
            if pos >= length:
                seqs.discard(seq_id)

    @property
    def used(self) -> int:
        return sum(1 for _, seqs in self.cells if seqs)

    def positions(self, seq_id: int) -> list[int]:
        return sorted(pos for pos, seqs in self.cells if seq_id in seqs)


def run(memory: CellMemory, cache: PrefixCache, seq: CachedSequence, tokens: list[int]) -> None:
    """Decode ``tokens`` into ``seq``, as the batcher does after a step."""
    memory.decode(seq.seq_id, seq.length, len(tokens))
    cache.extend(seq, tokens)


def check(memory: CellMemory, cache: PrefixCache, *seqs: CachedSequence) -> None:
    assert cache.used == memory.used
    for seq in seqs:
        assert memory.positions(seq.seq_id) == list(range(seq.length))


@pytest.fixture
def memory() -> CellMemory:
    return CellMemory()


def test_a_follow_up_takes_over_the_cached_conversation(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=100, seq_ids=4)
    first = cache.open([1, 2, 3, 4], reserve=10)
    assert first is not None and first.reused == 0
    run(memory, cache, first, [1, 2, 3, 4])
    run(memory, cache, first, [5])  # an output token
    cache.close(first, keep=True)
    assert cache.cached_entries == 1 and cache.used == 5
    follow = cache.open([1, 2, 3, 4, 5, 6, 7], reserve=12)
    assert follow is not None
    assert follow.seq_id == first.seq_id and follow.reused == 5
    assert cache.cached_entries == 0
    run(memory, cache, follow, [6, 7])
    check(memory, cache, follow)
    assert cache.used == 7


def test_prompts_sharing_a_prefix_share_its_cells(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=100, seq_ids=8)
    system = [9, 9, 9, 9, 9, 9]
    a = cache.open([*system, 1, 1], reserve=12)
    assert a is not None
    run(memory, cache, a, [*system, 1, 1])
    cache.close(a, keep=True)
    b = cache.open([*system, 2, 2], reserve=12)
    assert b is not None and b.seq_id != a.seq_id and b.reused == 6
    run(memory, cache, b, [2, 2])
    # The six system cells count once; a's conversation stays cached beside b.
    check(memory, cache, a, b)
    assert cache.used == 6 + 2 + 2
    # A running sequence lends its prefix too.
    c = cache.open([*system, 2, 3], reserve=12)
    assert c is not None and c.reused == 7
    run(memory, cache, c, [3])
    check(memory, cache, a, b, c)
    cache.close(b, keep=False)
    cache.close(c, keep=False)
    check(memory, cache, a)
    assert cache.used == 8


def test_the_last_prompt_token_is_always_evaluated(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=100, seq_ids=4)
    a = cache.open([1, 2, 3], reserve=5)
    assert a is not None
    run(memory, cache, a, [1, 2, 3])
    cache.close(a, keep=True)
    again = cache.open([1, 2, 3], reserve=5)
    assert again is not None and again.reused == 2 and again.length == 2
    check(memory, cache, again)


def test_eviction_frees_least_recently_used_prefixes_first(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=31, seq_ids=8)
    entries = []
    for first in (1, 2, 3):
        seq = cache.open([first] * 10, reserve=10)
        assert seq is not None
        run(memory, cache, seq, [first] * 10)
        cache.close(seq, keep=True)
        entries.append(seq)
    assert cache.used == 30
    # Reusing the first entry makes it the most recently used one.
    reuse = cache.open([1] * 10 + [4], reserve=11)
    assert reuse is not None and reuse.seq_id == entries[0].seq_id
    cache.close(reuse, keep=True)
    newcomer = cache.open([5] * 10, reserve=10)
    assert newcomer is not None
    run(memory, cache, newcomer, [5] * 10)
    check(memory, cache, newcomer)
    # Entry 2 (least recently used) went, and the newcomer took its id; 1 and 3 stay.
    assert newcomer.seq_id == entries[1].seq_id
    assert cache.used == 30 and cache.cached_entries == 2
    assert memory.positions(entries[0].seq_id) == list(range(10))
    assert memory.positions(entries[2].seq_id) == list(range(10))


def test_a_job_waits_when_running_sequences_hold_the_room(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=20, seq_ids=4)
    big = cache.open([1] * 4, reserve=15)
    assert big is not None
    run(memory, cache, big, [1] * 4)
    # 15 cells are reserved by the running job (4 used, 11 still to come): 5 remain.
    assert cache.open([2] * 3, reserve=6) is None
    assert cache.used == 4  # refusing changed nothing
    small = cache.open([2] * 3, reserve=5)
    assert small is not None
    cache.close(small, keep=False)
    cache.close(big, keep=False)
    assert cache.open([2] * 3, reserve=20) is not None
    assert memory.used == 0


def test_a_cached_prefix_gives_up_its_tail_when_room_is_short(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=20, seq_ids=4)
    a = cache.open([1] * 15, reserve=15)
    assert a is not None
    run(memory, cache, a, [1] * 15)
    cache.close(a, keep=True)
    # Shares 5 tokens with the cached 15; keeping all 15 leaves no room for 15 more.
    b = cache.open([1] * 5 + [2] * 10, reserve=20)
    assert b is not None and b.seq_id == a.seq_id and b.reused == 5
    check(memory, cache, b)
    assert cache.used == 5 and cache.cached_entries == 0


def test_without_sharing_nothing_is_reused_or_kept(memory: CellMemory) -> None:
    cache = PrefixCache(memory, size=50, seq_ids=2, share=False)
    a = cache.open([1, 2, 3], reserve=5)
    assert a is not None
    run(memory, cache, a, [1, 2, 3])
    cache.close(a, keep=True)
    assert cache.used == 0 and cache.cached_entries == 0
    b = cache.open([1, 2, 3, 4], reserve=6)
    assert b is not None and b.reused == 0


def test_random_workload_counts_exactly_what_llama_cpp_holds(memory: CellMemory) -> None:
    rng = random.Random(7)
    cache = PrefixCache(memory, size=400, seq_ids=12)
    running: list[CachedSequence] = []
    prefixes = [[rng.randrange(5) for _ in range(rng.randrange(1, 30))] for _ in range(6)]
    for _ in range(400):
        action = rng.random()
        if action < 0.35 and len(running) < 5:
            prompt = rng.choice(prefixes) + [rng.randrange(5) for _ in range(rng.randrange(1, 8))]
            seq = cache.open(prompt, reserve=len(prompt) + 10)
            if seq is not None:
                run(memory, cache, seq, prompt[seq.length :])
                running.append(seq)
        elif action < 0.75 and running:
            seq = rng.choice(running)
            if seq.budget:
                run(memory, cache, seq, [rng.randrange(5) for _ in range(min(3, seq.budget))])
        elif running:
            seq = running.pop(rng.randrange(len(running)))
            cache.close(seq, keep=rng.random() < 0.7)
        check(memory, cache, *running)
        assert cache.used + cache.reserved <= cache.size
