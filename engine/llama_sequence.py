"""One job inside the CPU backend's batch: what it still has to evaluate, and what it samples.

A :class:`ReadyJob` is what the preparing thread makes of a job (its prompt's tokens, sampler
and constraint, built only once the job's cancel check passed); once admitted, the job is a
:class:`BatchSequence`: each step it hands over tokens to evaluate (a chunk of its prompt,
later the token it sampled last) and, when the step computed its logits, samples the next
token with its own sampler (:mod:`.llama_sampler`), under its own llguidance mask, and turns
the token into text (:mod:`.stop`) for its job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp
import numpy as np
import numpy.typing as npt

from .constraints import ConstraintState
from .handoff import ThreadedJob
from .llama_model import LlamaModel
from .llama_sampler import GreedySampler, NativeSampler
from .prefix_cache import CachedSequence, shared_prefix
from .protocol import Delta, Finish, FinishReason, TokenLogprob, TopLogprob, Usage
from .stop import TextStream


@dataclass(slots=True)
class ReadyJob:
    """A job prepared for the batch, waiting for a place in it."""

    job: ThreadedJob
    prompt: list[int]
    sampler: NativeSampler | GreedySampler
    constraint: ConstraintState | None
    #: Output tokens it may generate (max_tokens, and the context window).
    limit: int

    def discard(self) -> None:
        """Free the sampler of a job that never joins the batch."""
        self.sampler.close()


class BatchSequence:
    """A job decoding in the batch, in the cells of ``cells``."""

    def __init__(self, ready: ReadyJob, cells: CachedSequence, model: LlamaModel) -> None:
        self.job = ready.job
        self.cells = cells
        self._ready = ready
        self._model = model
        params = ready.job.request.sampling
        self._top_logprobs = params.top_logprobs if params.logprobs else -1
        self._text = TextStream(params.stop)
        #: Tokens to evaluate before the next sample: the prompt's rest, then the last token.
        self.pending: list[int] = ready.prompt[cells.length :]
        self.produced = 0
        self._prompt = np.asarray(ready.prompt, dtype=np.int32)

    @property
    def constraint(self) -> ConstraintState | None:
        return self._ready.constraint

    def unread_share(self, prompt: npt.NDArray[np.int32]) -> int:
        """How many leading tokens of ``prompt`` this job's own prompt shares beyond what it
        has evaluated so far (0 once it generates)."""
        if self.produced or len(self.pending) <= 1:
            return 0
        shared = shared_prefix(self._prompt, prompt, prompt.shape[0] - 1)
        return max(0, shared - self.cells.length)

    def evaluated(self, count: int) -> None:
        """The first ``count`` pending tokens were decoded (their cells were recorded)."""
        del self.pending[:count]

    def sample(
        self,
        ctx: llama_cpp.llama_context_p,
        row: int,
        logits: npt.NDArray[np.float32],
        mask: Callable[[npt.NDArray[np.float32]], None] | None,
    ) -> FinishReason | None:
        """Sample the next token from batch row ``row``'s logits, ``logits`` (a view of
        them: ``mask`` forbids what the constraint does, in place); emits its text. Returns
        why the job ends, if it does."""
        logprob_of: Callable[[int], TokenLogprob] | None = None
        if self._top_logprobs >= 0:
            logprob_of = self._logprobs(logits, self._top_logprobs)
        if mask is not None:
            mask(logits)
        token_id = self._ready.sampler.sample(ctx, row, logits)
        if token_id in self._model.eog:
            return "eos"
        constraint = self._ready.constraint
        if constraint is not None:
            constraint.consume(token_id)
        self.produced += 1
        emitted = self._text.push(self._model.piece(token_id))
        self.job.emit(
            Delta(
                text=emitted,
                token_ids=(token_id,),
                logprobs=(logprob_of(token_id),) if logprob_of is not None else (),
            )
        )
        if self._text.stopped_by is not None:
            return "stop"
        if constraint is not None and constraint.finished:
            return "eos"
        if self.produced >= self._ready.limit:
            return "length"
        self.pending = [token_id]
        return None

    def finish(self, reason: FinishReason) -> None:
        """End the job: the text held back, then its Finish; frees the sampler."""
        if reason != "stop":
            tail = self._text.finish()
            if tail:
                self.job.emit(Delta(text=tail))
        self.close()
        self.job.finish(
            Finish(
                reason=reason,
                usage=Usage(len(self._ready.prompt), self.produced, self.cells.reused),
                stop_sequence=self._text.stopped_by,
            )
        )

    def close(self) -> None:
        self._ready.sampler.close()

    def _logprobs(self, logits: npt.NDArray[np.float32], top: int) -> Callable[[int], TokenLogprob]:
        """Log probabilities under the model's own distribution (before penalties, filters
        and constraints), computed before the logits are masked."""
        peak = float(logits.max())
        logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))
        ranked: tuple[TopLogprob, ...] = ()
        if top > 0:
            candidates = np.argpartition(logprobs, -top)[-top:]
            ranked = tuple(
                self._top(int(t), float(logprobs[t]))
                for t in candidates[np.argsort(-logprobs[candidates], kind="stable")]
            )

        def logprob_of(token_id: int) -> TokenLogprob:
            piece = self._model.piece(token_id)
            return TokenLogprob(
                token=piece.decode("utf-8", errors="replace"),
                token_id=token_id,
                logprob=float(logprobs[token_id]),
                bytes=tuple(piece),
                top=ranked,
            )

        return logprob_of

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        piece = self._model.piece(token_id)
        return TopLogprob(
            token=piece.decode("utf-8", errors="replace"),
            token_id=token_id,
            logprob=logprob,
            bytes=tuple(piece),
        )
