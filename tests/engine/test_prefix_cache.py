"""The KV cache's slots against a stand-in of llama.cpp's per-sequence streams.

``StreamMemory`` keeps each sequence's cells as llama.cpp's non-unified cache does (a stream of
positions per sequence; ``seq_cp`` across streams copies a whole stream, ``seq_rm`` drops
positions), so every test checks that each slot holds exactly the positions ``[0, length)``
the bookkeeping says, with the tokens it says.
"""

from __future__ import annotations

import random

import pytest

from exloop.engine.prefix_cache import MIN_COPY, CachedSequence, PrefixCache


class StreamMemory:
    def __init__(self) -> None:
        self.cells: dict[int, list[tuple[int, int]]] = {}

    def decode(self, seq_id: int, start: int, tokens: list[int]) -> None:
        stream = self.cells.setdefault(seq_id, [])
        stream.extend((start + i, token) for i, token in enumerate(tokens))

    def copy(self, source: int, target: int) -> None:
        self.cells[target] = list(self.cells.get(source, []))

    def truncate(self, seq_id: int, length: int) -> None:
        self.cells[seq_id] = [cell for cell in self.cells.get(seq_id, []) if cell[0] < length]


def run(memory: StreamMemory, cache: PrefixCache, seq: CachedSequence, tokens: list[int]) -> None:
    """Decode ``tokens`` into ``seq``, as the batcher does after a step."""
    memory.decode(seq.seq_id, seq.length, tokens)
    cache.extend(seq, tokens)


def check(memory: StreamMemory, cache: PrefixCache, *slots: CachedSequence) -> None:
    for slot in slots:
        cells = sorted(memory.cells.get(slot.seq_id, []))
        assert [pos for pos, _ in cells] == list(range(slot.length))
        assert [token for _, token in cells] == slot.tokens.tolist()
    assert cache.used == sum(len(stream) for stream in memory.cells.values())


@pytest.fixture
def memory() -> StreamMemory:
    return StreamMemory()


def test_a_follow_up_lands_in_its_conversations_slot(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=3, slot_size=256)
    first = cache.open([1, 2, 3, 4])
    assert first is not None and first.reused == 0
    run(memory, cache, first, [1, 2, 3, 4])
    run(memory, cache, first, [5])  # an output token
    cache.close(first, keep=True)
    assert cache.cached_entries == 1
    follow = cache.open([1, 2, 3, 4, 5, 6, 7])
    assert follow is not None
    assert follow.seq_id == first.seq_id and follow.reused == 5
    run(memory, cache, follow, [6, 7])
    check(memory, cache, follow)


def test_a_prompt_is_cut_back_to_what_it_shares(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=2, slot_size=256)
    first = cache.open([1, 2, 3, 4, 5])
    assert first is not None
    run(memory, cache, first, [1, 2, 3, 4, 5, 6, 7])
    cache.close(first, keep=True)
    other = cache.open([1, 2, 3, 9])
    assert other is not None and other.seq_id == first.seq_id and other.reused == 3
    check(memory, cache, other)
    # The last prompt token is always evaluated, even when all of it is cached.
    cache.close(other, keep=True)
    again = cache.open([1, 2, 3])
    assert again is not None and again.reused == 2
    check(memory, cache, again)


def test_a_long_shared_prefix_is_copied_from_a_running_slot(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=3, slot_size=512)
    system = list(range(100, 100 + MIN_COPY + 20))
    a = cache.open([*system, 1])
    assert a is not None
    run(memory, cache, a, [*system, 1])
    b = cache.open([*system, 2])
    assert b is not None and b.seq_id != a.seq_id and b.reused == len(system)
    check(memory, cache, a, b)
    run(memory, cache, b, [2])
    check(memory, cache, a, b)


def test_a_short_shared_prefix_is_evaluated_again(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=3, slot_size=512)
    system = list(range(100, 100 + MIN_COPY - 10))
    a = cache.open([*system, 1])
    assert a is not None
    run(memory, cache, a, [*system, 1])
    b = cache.open([*system, 2])
    assert b is not None and b.reused == 0
    check(memory, cache, a, b)


def test_a_new_prompt_takes_the_least_recently_used_idle_slot(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=3, slot_size=256)
    slots = []
    for first in (1, 2, 3):
        seq = cache.open([first] * 10)
        assert seq is not None
        run(memory, cache, seq, [first] * 10)
        slots.append(seq)
    assert cache.open([9] * 5) is None  # every slot is busy
    for seq in slots:
        cache.close(seq, keep=True)
    # Reusing the first conversation makes it the most recently used.
    reuse = cache.open([1] * 10 + [4])
    assert reuse is not None and reuse.seq_id == slots[0].seq_id
    cache.close(reuse, keep=True)
    newcomer = cache.open([5] * 10)
    assert newcomer is not None and newcomer.seq_id == slots[1].seq_id
    assert newcomer.reused == 0 and newcomer.length == 0
    check(memory, cache, newcomer, slots[0], slots[2])


def runs(cache: PrefixCache) -> int:
    """How many runs of consecutive busy slots there are (llama.cpp's ubatches per step)."""
    busy = [slot.busy for slot in cache._slots]
    return sum(b and (i == 0 or not busy[i - 1]) for i, b in enumerate(busy))


def test_jobs_running_together_end_up_in_consecutive_slots(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=8, slot_size=256)
    # Eight finished conversations, one per slot; then follow-ups of three slots apart
    # (1, 5 and 3) and a newcomer run together.
    conversations = [[i] * 10 for i in range(8)]
    for prompt in conversations:
        seq = cache.open(prompt)
        assert seq is not None
        run(memory, cache, seq, prompt)
        cache.close(seq, keep=True)
    opened = []
    for prompt in (conversations[1], conversations[5], conversations[3], [9] * 4):
        seq = cache.open([*prompt, 42])
        assert seq is not None
        run(memory, cache, seq, [*prompt, 42][seq.length :])
        opened.append(seq)
    # Each follow-up found its own conversation; the newcomer went next to one of them.
    assert [seq.seq_id for seq in opened[:3]] == [1, 5, 3]
    assert [seq.reused for seq in opened] == [10, 10, 10, 0]
    assert opened[3].seq_id in {0, 2, 4, 6}
    moves = dict(cache.compact())
    running = [moves.get(seq, seq) for seq in opened]
    assert runs(cache) == 1
    ids = sorted(seq.seq_id for seq in running)
    assert ids == list(range(ids[0], ids[0] + 4))
    # A moved job keeps its cells (and what it reused); its old slot stays cached.
    assert [seq.reused for seq in running] == [10, 10, 10, 0]
    for old, new in moves.items():
        assert not old.busy and old.tokens.tolist() == new.tokens.tolist()
    check(memory, cache, *running, *moves)
    assert cache.compact() == []


def test_a_conversation_apart_from_the_running_slots_is_moved_next_to_them(
    memory: StreamMemory,
) -> None:
    cache = PrefixCache(memory, slots=6, slot_size=512)
    placed = {}
    for name, prompt in (("a", [1] * 5), ("b", [2] * 5), ("c", [3] * 5), ("d", [4] * 8)):
        seq = cache.open(prompt)
        assert seq is not None
        run(memory, cache, seq, prompt)
        placed[name] = seq
    for name in ("b", "c", "d"):
        cache.close(placed[name], keep=True)
    # "a" runs in slot 0, "d"'s conversation sits in slot 3: its follow-up reuses it there,
    # then moves to slot 1, next to "a".
    assert (placed["a"].seq_id, placed["d"].seq_id) == (0, 3)
    follow = cache.open([4] * 8 + [7])
    assert follow is not None and follow.seq_id == 3 and follow.reused == 8
    run(memory, cache, follow, [7])
    assert runs(cache) == 2
    (old, new), *others = cache.compact()
    assert not others and (old.seq_id, new.seq_id) == (3, 1)
    assert runs(cache) == 1 and new.reused == 8 and new.tokens.tolist() == [4] * 8 + [7]
    check(memory, cache, placed["a"], new, old)


def test_a_job_fills_the_gap_between_two_runs(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=4, slot_size=256)
    seqs = [cache.open([i] * 3) for i in range(4)]
    assert all(seq is not None for seq in seqs)
    cache.close(seqs[1], keep=True)  # type: ignore[arg-type]
    cache.close(seqs[3], keep=True)  # type: ignore[arg-type]
    assert runs(cache) == 2
    # Slot 1 bridges the runs {0} and {2}; slot 3 would only extend one.
    seq = cache.open([7] * 3)
    assert seq is not None and seq.seq_id == 1 and runs(cache) == 1


def test_a_cancelled_jobs_slot_is_emptied(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=2, slot_size=256)
    seq = cache.open([1, 2, 3])
    assert seq is not None
    run(memory, cache, seq, [1, 2, 3])
    cache.close(seq, keep=False)
    assert memory.cells[seq.seq_id] == [] and cache.used == 0


def test_without_sharing_nothing_is_reused(memory: StreamMemory) -> None:
    cache = PrefixCache(memory, slots=2, slot_size=256, share=False)
    a = cache.open([1, 2, 3])
    assert a is not None
    run(memory, cache, a, [1, 2, 3])
    cache.close(a, keep=True)
    assert cache.used == 0 and cache.cached_entries == 0
    b = cache.open([1, 2, 3, 4])
    assert b is not None and b.reused == 0


def test_random_workload_keeps_every_slot_in_step_with_its_stream(memory: StreamMemory) -> None:
    rng = random.Random(7)
    cache = PrefixCache(memory, slots=5, slot_size=4096)
    running: list[CachedSequence] = []
    prefixes = [[rng.randrange(5) for _ in range(rng.randrange(1, 150))] for _ in range(6)]
    for _ in range(400):
        action = rng.random()
        if action < 0.35:
            prompt = rng.choice(prefixes) + [rng.randrange(5) for _ in range(rng.randrange(1, 8))]
            seq = cache.open(prompt)
            if seq is not None:
                assert seq.tokens.tolist() == prompt[: seq.length]
                run(memory, cache, seq, prompt[seq.length :])
                running.append(seq)
        elif action < 0.75 and running:
            seq = rng.choice(running)
            run(memory, cache, seq, [rng.randrange(5) for _ in range(3)])
        elif running:
            seq = running.pop(rng.randrange(len(running)))
            cache.close(seq, keep=rng.random() < 0.7)
        # The batcher gathers the running jobs before every step.
        moves = dict(cache.compact())
        running = [moves.get(seq, seq) for seq in running]
        assert runs(cache) <= 1
        check(memory, cache, *running)
