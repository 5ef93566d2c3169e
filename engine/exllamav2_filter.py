"""An llguidance constraint driven the way ExLlamaV2's generator drives its filters.

ExLlamaV2 (0.3.2) calls a job's filters from ``iterate()``: ``begin("")`` before the first
token, ``feed(token)`` after each sampled token, and, when every filter says
``can_mask_logits()`` and ``use_background_worker()``, ``prepare_logit_mask()`` on its filter
thread pool right after the next forward pass is queued on the GPU, then ``mask_logits(logits)``
on the CPU logits just before sampling. So the grammar's mask is computed while the GPU works.
``mask_logits`` itself lives in the adapter, which hands the tensor's memory to
:meth:`GrammarFilterCore.apply_mask` as a numpy view.

:class:`GrammarFilterCore` is that behaviour on top of :class:`~.constraints.ConstraintState`,
with no import of torch or ExLlamaV2: the backend mixes it into an ``ExLlamaV2Filter``
subclass. Two rules keep one job's grammar from failing others:

* nothing here raises into ``iterate()`` (an exception there would end every job in the
  batch): a rejected token or a matcher error is recorded in :attr:`error`, the mask then
  allows only the stop tokens so the job ends, and the backend fails that job alone;
* after the grammar is complete (:attr:`finished`) the mask allows only llguidance's EOS
  tokens, which are the model's stop tokens, so the job ends with reason ``eos``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .constraints import ConstraintState
from .errors import GenerationFailed


class SupportsItem(Protocol):
    """A one-element tensor (what ExLlamaV2 feeds: shape ``(1, 1)``)."""

    def item(self) -> int | float | bool: ...


class GrammarFilterCore:
    """One job's grammar as ExLlamaV2 filter methods; see the module docstring."""

    def __init__(
        self, state: ConstraintState, *, width: int, stop_token_ids: Sequence[int]
    ) -> None:
        self._state = state
        #: Additive mask over the output layer's rows: 0 where allowed, -inf where not.
        self._mask = np.zeros(width, dtype=np.float32)
        self._stop_ids = np.asarray(stop_token_ids, dtype=np.int64)
        #: Why the grammar failed, once it did; the backend then fails the job.
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        """The grammar is complete: the job may end now."""
        return self.error is None and self._state.finished

    # -- the ExLlamaV2Filter interface ---------------------------------------------------------

    def begin(self, prefix_str: str) -> None:
        """Start of the output. The matcher was created for this job and nothing precedes the
        output (no token healing), so the grammar is already at its start."""
        if prefix_str:
            self._fail(f"Constraint given a prefix {prefix_str!r}, which it cannot follow.")

    def feed(self, token: SupportsItem) -> None:
        """Advance past the sampled token."""
        if self.error is not None or self._state.finished:
            # The stop token that ends the job after a complete grammar, or after a failure.
            return
        try:
            self._state.consume(int(token.item()))
        except GenerationFailed as exc:
            self._fail(exc.message)

    def can_mask_logits(self) -> bool:
        return True

    def use_background_worker(self) -> bool:
        return True

    def prepare_logit_mask(self) -> bool:
        """Compute the next mask (on the filter pool, during the forward pass)."""
        self._mask.fill(0.0)
        if self.error is None:
            try:
                self._state.mask_logits(self._mask)
                return True
            except GenerationFailed as exc:
                self._fail(exc.message)
        self._mask.fill(-np.inf)
        self._mask[self._stop_ids[self._stop_ids < self._mask.shape[0]]] = 0.0
        return True

    def apply_mask(self, view: npt.NDArray[np.float32]) -> None:
        """Forbid, in place, every token the grammar does not allow next. The adapter's
        ``mask_logits(logits)`` passes ``logits.numpy()``, which shares the tensor's memory."""
        width = min(view.shape[-1], self._mask.shape[0])
        view[..., :width] += self._mask[:width]
        # Rows of the output layer past llguidance's vocabulary are never valid text.
        view[..., width:] = -np.inf

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
