"""Which slot of the KV cache holds what: the running sequences and the prompts they leave.

The context has one *slot* per job that can run at once: a llama.cpp sequence with a KV stream
of its own (a non-unified cache, as llama-server uses), so a job's attention only ever reads
its own cells, however much the other slots hold. A slot keeps the tokens of its last job
(prompt and output) when that job ends, as a cached prefix. A new prompt is placed where the
most of it is already evaluated:

* in the idle slot whose tokens share the longest prefix with it, cut back to that prefix
  (a conversation's next turn lands where its last turn was);
* or, when another slot (idle or still running) shares a clearly longer prefix (requests
  that share a system prompt and tools), in the least recently used idle slot after copying
  that slot's cells into it (``llama_memory_seq_cp`` copies a whole stream, which costs far
  less than evaluating the prefix again);
* or, sharing nothing, in the least recently used idle slot, emptied.

Where the running jobs sit matters too. With a stream per sequence, llama.cpp evaluates a
batch in one ubatch per run of consecutive sequence ids (``split_equal``), each a pass over
all the weights: 16 jobs in scattered slots decode at about half the speed of 16 in slots
0-15. So among slots that offer as much of a prompt, a new job takes one next to the running
jobs; and when the running jobs still end up in several runs (a job's cached prefix lay
apart, a job in the middle ended), :meth:`PrefixCache.compact` (which the batcher calls when
it admits jobs, or once a gap has lasted) moves the ones outside the best-placed block into
its idle slots (a stream copy each, a few milliseconds here, against a pass over the weights
at every later step). A moved job's old slot stays cached.

This module keeps the bookkeeping llama.cpp does not expose: the tokens behind every slot's
cells, and which slots are busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

#: A prefix held in another slot is copied over when it spares evaluating at least this many
#: more tokens than the best idle slot offers (copying a whole stream costs about as much as
#: evaluating a few dozen tokens).
MIN_COPY = 64


class KvMemory(Protocol):
    """The two operations the slots need from llama.cpp's memory."""

    def copy(self, source: int, target: int) -> None:
        """Make ``target``'s stream a copy of ``source``'s (all its cells)."""

    def truncate(self, seq_id: int, length: int) -> None:
        """Drop ``seq_id``'s cells at positions ``length`` and on (0: all of them)."""


def shared_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = min(a.shape[0], b.shape[0], limit)
    mismatches = np.flatnonzero(a[:n] != b[:n])
    return int(mismatches[0]) if mismatches.size else n


class CachedSequence:
    """One slot: a llama.cpp sequence id and the tokens its cells hold, in position order."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self._tokens: npt.NDArray[np.int32] = np.empty(64, dtype=np.int32)
        self.length = 0
        self.busy = False
        #: How many prompt tokens the running job found already evaluated.
        self.reused = 0
        #: When it was last chosen or released (a counter): the least recent goes first.
        self.used_at = 0

    @property
    def tokens(self) -> npt.NDArray[np.int32]:
        return self._tokens[: self.length]

    def common_prefix(self, tokens: npt.NDArray[np.int32], limit: int) -> int:
        """How many leading tokens of ``tokens`` (at most ``limit``) this slot holds."""
        return shared_prefix(self.tokens, tokens, limit)

    def _set(self, tokens: npt.NDArray[np.int32]) -> None:
        self.length = 0
        self._append(tokens)

    def _append(self, tokens: Sequence[int] | npt.NDArray[np.int32]) -> None:
        end = self.length + len(tokens)
        if end > self._tokens.shape[0]:
            grown = np.empty(max(end, 2 * self._tokens.shape[0]), dtype=np.int32)
            grown[: self.length] = self._tokens[: self.length]
            self._tokens = grown
        if end - self.length == 1:
            self._tokens[self.length] = tokens[0]  # a generating job's token: no conversion
        else:
            self._tokens[self.length : end] = tokens
        self.length = end


class PrefixCache:
    """The slots of one context; ``share=False`` (recurrent models, whose state cannot be cut
    back to a prefix) empties a slot for every new job instead."""

    def __init__(self, memory: KvMemory, *, slots: int, slot_size: int, share: bool = True) -> None:
        self._memory = memory
        self._slots = [CachedSequence(seq_id) for seq_id in range(slots)]
        self.slot_size = slot_size
        self._share = share
        self._clock = 0

    @property
    def size(self) -> int:
        """Cells in all slots."""
        return self.slot_size * len(self._slots)

    @property
    def used(self) -> int:
        """Cells holding tokens, in running and idle slots."""
        return sum(slot.length for slot in self._slots)

    @property
    def runs(self) -> int:
        """Runs of consecutive busy slots (llama.cpp's passes over the weights per step)."""
        return _runs([slot.busy for slot in self._slots])

    @property
    def cached_entries(self) -> int:
        """Idle slots that hold a reusable prefix."""
        return sum(1 for slot in self._slots if not slot.busy and slot.length)

    def open(self, prompt: Sequence[int]) -> CachedSequence | None:
        """A slot for a job with ``prompt``, holding as much of it as the slots offer (never
        its last token, whose logits are needed), or None when every slot is busy."""
        idle = [slot for slot in self._slots if not slot.busy]
        if not idle:
            return None
        tokens = np.asarray(prompt, dtype=np.int32)
        limit = tokens.shape[0] - 1
        if self._share:
            lengths = {slot.seq_id: slot.common_prefix(tokens, limit) for slot in self._slots}
        else:
            lengths = dict.fromkeys((slot.seq_id for slot in self._slots), 0)
        joins = self._busy_neighbours()
        # The longest prefix; then a slot next to running jobs; then the most recently used
        # (a conversation's own slot before another that shares as much).
        best_idle = max(idle, key=lambda s: (lengths[s.seq_id], joins[s.seq_id], s.used_at))
        # For a slot to fill from scratch or by copy: next to running jobs, least recently used.
        spare = max(idle, key=lambda s: (joins[s.seq_id], -s.used_at))
        best = max(self._slots, key=lambda s: lengths[s.seq_id])
        if lengths[best.seq_id] >= lengths[best_idle.seq_id] + MIN_COPY:
            slot = spare
            shared = lengths[best.seq_id]
            self._memory.copy(best.seq_id, slot.seq_id)
            slot._set(best.tokens)
        elif lengths[best_idle.seq_id]:
            slot = best_idle
            shared = lengths[slot.seq_id]
        else:
            slot, shared = spare, 0
        self._cut(slot, shared)
        slot.busy = True
        slot.reused = shared
        self._touch(slot)
        return slot

    def extend(self, seq: CachedSequence, tokens: Sequence[int]) -> None:
        """Record that ``tokens`` were decoded into ``seq``'s next cells."""
        seq._append(tokens)

    def close(self, seq: CachedSequence, *, keep: bool) -> None:
        """A job ends: its slot keeps the tokens as a cached prefix (``keep``) or is emptied."""
        seq.busy = False
        if not (keep and self._share):
            self._cut(seq, 0)
        self._touch(seq)

    def compact(self) -> list[tuple[CachedSequence, CachedSequence]]:
        """Gather the busy slots into one run of consecutive slots (see the module doc):
        each busy slot outside the block of slots that already holds the most of them is
        copied into an idle slot inside it. Returns the moves ``(old, new)``, done in the
        KV cache and here; the caller's jobs in ``old`` now run in ``new``."""
        if not self._share:
            return []  # recurrent state: no copies (and llama.cpp does not need the runs)
        busy = [slot.busy for slot in self._slots]
        count = sum(busy)
        if _runs(busy) <= 1:
            return []
        start = max(range(len(busy) - count + 1), key=lambda i: (sum(busy[i : i + count]), -i))
        block = self._slots[start : start + count]
        outside = [slot for slot in self._slots if slot.busy and slot not in block]
        free = [slot for slot in block if not slot.busy]
        moves = list(zip(outside, free, strict=True))
        for old, new in moves:
            self._memory.copy(old.seq_id, new.seq_id)
            new._set(old.tokens)
            new.busy, new.reused = True, old.reused
            old.busy = False
            self._touch(old)
            self._touch(new)
        return moves

    def _busy_neighbours(self) -> dict[int, int]:
        """For each slot, how many of the slots next to it are busy (0, 1 or 2)."""
        slots = self._slots
        return {
            slot.seq_id: sum(0 <= j < len(slots) and slots[j].busy for j in (i - 1, i + 1))
            for i, slot in enumerate(slots)
        }

    def clear(self) -> None:
        """Forget every slot's tokens (after llama.cpp's memory was cleared)."""
        for slot in self._slots:
            slot.busy = False
            slot.length = 0

    def _cut(self, slot: CachedSequence, length: int) -> None:
        if slot.length > length:
            self._memory.truncate(slot.seq_id, length)
            slot.length = length

    def _touch(self, slot: CachedSequence) -> None:
        self._clock += 1
        slot.used_at = self._clock


def _runs(busy: list[bool]) -> int:
    """How many runs of consecutive True values ``busy`` holds."""
    return sum(b and (i == 0 or not busy[i - 1]) for i, b in enumerate(busy))
