"""Which KV cells hold what: the running sequences, the prefixes they share, and the cache.

All sequences live in one unified llama.cpp KV cache of ``size`` cells. A cell holds one token
position and may belong to several sequences at once: ``llama_memory_seq_cp`` tags existing
cells with another sequence id without copying any data. So a new prompt that starts like a
sequence already in the cache (a conversation's next turn, requests sharing a system prompt
and tool list) borrows those cells and evaluates only what differs.

This module keeps the bookkeeping that llama.cpp does not expose: the token ids behind every
sequence (to find the longest shared prefix) and how many cells are in use. Cells are tracked
as *spans*, runs of positions decoded together; a sequence is a path of spans from position 0,
and a span shared by several sequences counts once. A span is freed when its last holder lets
go, exactly when llama.cpp frees the cells.

A finished sequence stays in the cache as a reusable prefix, until its cells or its sequence
id are needed: then the least recently used entries are evicted first. Running sequences
reserve cells for their whole prompt and output when they start, so a running sequence never
runs out of room; a job that does not fit waits until others finish.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt


class KvMemory(Protocol):
    """The two cell operations the cache needs from llama.cpp's memory."""

    def copy(self, source: int, target: int, length: int) -> None:
        """Tag the cells of ``source`` at positions ``[0, length)`` with ``target`` too."""

    def truncate(self, seq_id: int, length: int) -> None:
        """Drop ``seq_id`` from its cells at positions ``length`` and on (0: all of them)."""


class _Span:
    """Cells at positions ``[start, start + length)``, decoded together, after ``parent``."""

    __slots__ = ("holders", "length", "parent", "start")

    def __init__(self, parent: _Span | None, start: int, length: int, holders: int) -> None:
        self.parent = parent
        self.start = start
        self.length = length
        self.holders = holders

    @property
    def end(self) -> int:
        return self.start + self.length


class CachedSequence:
    """One llama.cpp sequence id and the tokens its cells hold, in position order."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self._tokens: npt.NDArray[np.int32] = np.empty(64, dtype=np.int32)
        self.length = 0
        #: The last span of the sequence's path (None while it holds no cells).
        self.leaf: _Span | None = None
        #: Cells it may still add (its reservation); 0 once it only sits in the cache.
        self.budget = 0
        #: How many prompt tokens it borrowed from other sequences when it started.
        self.reused = 0

    @property
    def tokens(self) -> npt.NDArray[np.int32]:
        return self._tokens[: self.length]

    def _append(self, tokens: Sequence[int]) -> None:
        end = self.length + len(tokens)
        if end > self._tokens.shape[0]:
            grown = np.empty(max(end, 2 * self._tokens.shape[0]), dtype=np.int32)
            grown[: self.length] = self._tokens[: self.length]
            self._tokens = grown
        self._tokens[self.length : end] = tokens
        self.length = end

    def common_prefix(self, tokens: npt.NDArray[np.int32], limit: int) -> int:
        """How many leading tokens (at most ``limit``) this sequence shares with ``tokens``."""
        return shared_prefix(self.tokens, tokens, limit)


def shared_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = min(a.shape[0], b.shape[0], limit)
    mismatches = np.flatnonzero(a[:n] != b[:n])
    return int(mismatches[0]) if mismatches.size else n


class PrefixCache:
    """The cells of one unified KV cache, shared by running sequences and cached prefixes.

    ``seq_ids`` ids are handed out; ``share=False`` (recurrent models, whose state cannot be
    cut back to a prefix) turns reuse and caching off.
    """

    def __init__(self, memory: KvMemory, *, size: int, seq_ids: int, share: bool = True) -> None:
        self._memory = memory
        self.size = size
        #: Cells held by any sequence.
        self.used = 0
        self._share = share
        self._free_ids = list(range(seq_ids - 1, -1, -1))
        self._active: dict[int, CachedSequence] = {}
        #: Cached prefixes, least recently used first.
        self._cached: OrderedDict[int, CachedSequence] = OrderedDict()

    @property
    def reserved(self) -> int:
        """Cells running sequences may still add."""
        return sum(seq.budget for seq in self._active.values())

    @property
    def cached_entries(self) -> int:
        return len(self._cached)

    def open(self, prompt: Sequence[int], reserve: int) -> CachedSequence | None:
        """A running sequence for ``prompt`` that may hold ``reserve`` cells in all, or None
        when that much room cannot be made now.

        The longest prefix of ``prompt`` (all but its last token, whose logits are needed)
        held by any sequence is borrowed; cached prefixes are evicted, least recently used
        first, until the rest of the reservation fits. A cached prefix that the prompt
        extends is taken over rather than copied; so is one whose other tokens must make room.
        """
        tokens = np.asarray(prompt, dtype=np.int32)
        holder, shared = self._best_holder(tokens)
        need = reserve - shared
        cached = holder if holder is not None and holder.seq_id in self._cached else None
        take_over = cached is not None and (
            shared == cached.length or not self._fits(need, self._kept_cells(cached))
        )
        kept = self._kept_cells(None) + shared if take_over else self._kept_cells(holder)
        if not self._fits(need, kept):
            return None
        if take_over and cached is not None:
            seq = self._cached.pop(cached.seq_id)
            self._cut(seq, shared)
            self._evict_until(need, keep=None)
        else:
            self._evict_until(need, keep=holder)
            seq = CachedSequence(self._take_id(keep=holder))
            if shared and holder is not None:
                self._memory.copy(holder.seq_id, seq.seq_id, shared)
                seq.leaf = self._split_at(holder.leaf, shared)
                self._hold(seq.leaf)
                seq._append(holder.tokens[:shared].tolist())
                self._touch(holder)
        seq.reused = shared
        seq.budget = need
        self._active[seq.seq_id] = seq
        return seq

    def _fits(self, need: int, kept: int) -> bool:
        """Whether ``need`` more cells fit once every evictable cell is freed (``kept``
        cells stay held)."""
        return self.size - self.reserved - kept >= need

    def extend(self, seq: CachedSequence, tokens: Sequence[int]) -> None:
        """Record that ``tokens`` were decoded into new cells of ``seq``, after its others."""
        count = len(tokens)
        leaf = seq.leaf
        if leaf is not None and leaf.holders == 1:
            leaf.length += count  # its own span (a shared one would have other holders)
        else:
            seq.leaf = _Span(leaf, seq.length, count, 1)
        seq._append(tokens)
        seq.budget = max(0, seq.budget - count)
        self.used += count

    def close(self, seq: CachedSequence, *, keep: bool) -> None:
        """A running sequence ends: its cells stay as a cached prefix (``keep``) or are freed."""
        del self._active[seq.seq_id]
        seq.budget = 0
        if keep and self._share and seq.length:
            self._cached[seq.seq_id] = seq
            return
        self._cut(seq, 0)
        self._free_ids.append(seq.seq_id)

    def clear(self) -> None:
        """Forget every sequence (after llama.cpp's memory was cleared)."""
        for seq in [*self._active.values(), *self._cached.values()]:
            self._free_ids.append(seq.seq_id)
        self._active.clear()
        self._cached.clear()
        self.used = 0

    # -- prefixes --------------------------------------------------------------------------

    def _best_holder(self, tokens: npt.NDArray[np.int32]) -> tuple[CachedSequence | None, int]:
        """The sequence sharing the longest prefix with ``tokens`` (at most all but the last
        token), preferring cached ones, and the prefix's length."""
        if not self._share:
            return None, 0
        limit = tokens.shape[0] - 1
        best: CachedSequence | None = None
        best_length = 0
        for seq in [*self._active.values(), *reversed(self._cached.values())]:
            length = seq.common_prefix(tokens, limit)
            if length > best_length or (
                length == best_length and length and seq.seq_id in self._cached
            ):
                best, best_length = seq, length
        return best, best_length

    def _touch(self, seq: CachedSequence) -> None:
        if seq.seq_id in self._cached:
            self._cached.move_to_end(seq.seq_id)

    # -- eviction --------------------------------------------------------------------------

    def _kept_cells(self, keep: CachedSequence | None) -> int:
        """Cells still held once every cached prefix but ``keep`` is evicted."""
        seen: set[int] = set()
        total = 0
        for seq in [*self._active.values(), *([keep] if keep is not None else [])]:
            span = seq.leaf
            while span is not None and id(span) not in seen:
                seen.add(id(span))
                total += span.length
                span = span.parent
        return total

    def _evict_until(self, need: int, *, keep: CachedSequence | None) -> None:
        for seq_id in list(self._cached):
            if self.size - self.used - self.reserved >= need:
                return
            if keep is None or seq_id != keep.seq_id:
                self._evict(seq_id)

    def _evict(self, seq_id: int) -> None:
        seq = self._cached.pop(seq_id)
        self._cut(seq, 0)
        self._free_ids.append(seq_id)

    def _take_id(self, *, keep: CachedSequence | None) -> int:
        if not self._free_ids:
            victim = next((s for s in self._cached if keep is None or s != keep.seq_id), None)
            if victim is None:
                raise RuntimeError("no sequence id is free")  # ids outnumber running sequences
            self._evict(victim)
        return self._free_ids.pop()

    # -- spans -----------------------------------------------------------------------------

    def _cut(self, seq: CachedSequence, length: int) -> None:
        """Drop ``seq``'s cells at positions ``length`` and on, in llama.cpp and here."""
        if seq.length <= length:
            return
        self._memory.truncate(seq.seq_id, length)
        keep = self._split_at(seq.leaf, length)
        span = seq.leaf
        while span is not None and span is not keep:
            span.holders -= 1
            if span.holders == 0:
                self.used -= span.length
            span = span.parent
        seq.leaf = keep
        seq.length = length

    @staticmethod
    def _split_at(leaf: _Span | None, position: int) -> _Span | None:
        """The span of ``leaf``'s path that ends at ``position``, splitting one if needed."""
        span = leaf
        while span is not None and span.start >= position:
            span = span.parent
        if span is None or span.end == position:
            return span
        lower = _Span(span.parent, span.start, position - span.start, span.holders)
        span.length = span.end - position
        span.start = position
        span.parent = lower
        return lower

    @staticmethod
    def _hold(leaf: _Span | None) -> None:
        span = leaf
        while span is not None:
            span.holders += 1
            span = span.parent
