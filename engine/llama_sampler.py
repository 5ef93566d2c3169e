"""SamplingParams as a native llama.cpp sampler chain.

Sampling runs in llama.cpp's C code, token after token, with no Python callback. The chain
applies, in order: logit bias, repetition penalty, frequency/presence penalties, DRY, then
either greedy selection (``temperature == 0``) or top-k, top-p, min-p, temperature and a
seeded draw. Temperature comes last, so the truncation filters see the model's own
distribution (ExLlamaV2's ``temperature_last``).

What each penalty looks at (the same on every backend): the repetition penalty and DRY see the
prompt and the output, within the context window; frequency and presence penalties see only
the output, as in OpenAI's API.

Greedy decoding with nothing but logit biases (the common case: agents, tests, strict tools)
needs no chain: :class:`GreedySampler` biases the logits and takes the first highest one,
which is exactly what the chain's greedy stage picks, without the array of one candidate per
vocabulary entry that ``llama_sampler_sample`` builds first (9 µs a row against 56 on
SmolLM2's 49k tokens; a 16-job step samples 16 rows).
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import llama_cpp
import numpy as np
import numpy.typing as npt

from .sampling import DrySettings, SamplingParams

#: A bias at the bottom of the range bans the token outright rather than making it unlikely.
BAN_BIAS = -100.0
_SEED_MODULUS = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED (= the modulus) asks llama.cpp for a random seed
#: DRY settings whose prepared stage is kept (a handful are in use at once in practice).
_DRY_STAGES = 16


class DryStages:
    """Prepared DRY stages by their settings, for one vocabulary and context size.

    llama.cpp's DRY constructor scans the whole vocabulary for every sequence breaker (10 to
    40 ms per breaker on SmolLM2's 49k tokens); cloning a prepared stage copies the result in
    about a millisecond. So each distinct setting is prepared once, and every job gets its own
    clone (a stage keeps per-job history). :meth:`close` frees the prepared stages.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_ctx: int) -> None:
        self._vocab = vocab
        self._n_ctx = n_ctx
        self._prepared: OrderedDict[DrySettings, llama_cpp.llama_sampler_p] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, dry: DrySettings) -> None:
        """Prepare the stage for ``dry`` unless it is kept already (the slow part; the lock
        is not held meanwhile, so other settings' clones go on)."""
        with self._lock:
            if dry in self._prepared:
                self._prepared.move_to_end(dry)
                return
        stage = self._prepare(dry)
        if not stage:
            raise MemoryError("llama.cpp could not create a DRY stage")
        with self._lock:
            if dry in self._prepared:
                llama_cpp.llama_sampler_free(stage)  # prepared meanwhile by another thread
                return
            self._prepared[dry] = stage
            while len(self._prepared) > _DRY_STAGES:
                llama_cpp.llama_sampler_free(self._prepared.popitem(last=False)[1])

    def clone(self, dry: DrySettings) -> llama_cpp.llama_sampler_p:
        """A new stage for ``dry``, owned by the caller (or a null pointer on failure);
        prepared here if :meth:`prepare` was not called for it."""
        while True:
            with self._lock:
                prepared = self._prepared.get(dry)
                if prepared is not None:
                    self._prepared.move_to_end(dry)
                    clone: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_clone(prepared)
                    return clone
            self.prepare(dry)

    def close(self) -> None:
        with self._lock:
            for stage in self._prepared.values():
                llama_cpp.llama_sampler_free(stage)
            self._prepared.clear()

    def _prepare(self, dry: DrySettings) -> llama_cpp.llama_sampler_p:
        breakers = [b.encode("utf-8") for b in dry.sequence_breakers]
        breaker_array = (ctypes.c_char_p * len(breakers))(*breakers)
        stage: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_init_dry(
            self._vocab,
            dry.multiplier,
            dry.base,
            dry.allowed_length,
            self._n_ctx,
            breaker_array,
            len(breakers),
        )
        return stage


class NativeSampler:
    """One job's sampler chain; :meth:`close` frees it (the chain owns its stages)."""

    def __init__(
        self,
        dry_stages: DryStages,
        n_vocab: int,
        n_ctx: int,
        params: SamplingParams,
        prompt_tokens: Sequence[int],
    ) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        try:
            self._build(dry_stages, n_vocab, n_ctx, params, prompt_tokens)
        except BaseException:
            self.close()
            raise

    def _build(
        self,
        dry_stages: DryStages,
        n_vocab: int,
        n_ctx: int,
        params: SamplingParams,
        prompt_tokens: Sequence[int],
    ) -> None:
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for entry, (token_id, bias) in zip(biases, params.logit_bias.items(), strict=True):
                entry.token = token_id
                entry.bias = -math.inf if bias <= BAN_BIAS else bias
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
        if params.repetition_penalty != 1.0:
            stage = llama_cpp.llama_sampler_init_penalties(
                n_vocab, n_ctx, params.repetition_penalty, 0.0, 0.0
            )
            self._add(stage, history=prompt_tokens)
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            stage = llama_cpp.llama_sampler_init_penalties(
                n_vocab, n_ctx, 1.0, params.frequency_penalty, params.presence_penalty
            )
            self._add(stage)
        if params.dry.enabled:
            self._add(dry_stages.clone(params.dry), history=prompt_tokens)
        if params.greedy:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % _SEED_MODULUS
        self._add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, stage: llama_cpp.llama_sampler_p, history: Sequence[int] = ()) -> None:
        if not stage:
            raise MemoryError("llama.cpp could not create a sampler stage")
        # Stages that look back at the prompt learn it before the first draw; the chain then
        # feeds every sampled token to all stages itself.
        for token_id in history:
            llama_cpp.llama_sampler_accept(stage, token_id)
        llama_cpp.llama_sampler_chain_add(self._chain, stage)

    def sample(
        self, ctx: llama_cpp.llama_context_p, row: int, logits: npt.NDArray[np.float32]
    ) -> int:
        """Draw the next token from the logits of batch row ``row`` (``logits``, a view of
        them, is not needed: the chain reads them from ``ctx``), and record it."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, row))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class GreedySampler:
    """Greedy selection after logit biases, read straight off the logits (see the module
    doc): for parameters with no penalty, no DRY and temperature 0 (:func:`needs_chain`)."""

    def __init__(self, params: SamplingParams) -> None:
        bias = params.logit_bias
        self._tokens = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
        self._biases = np.array(
            [-math.inf if b <= BAN_BIAS else b for b in bias.values()], dtype=np.float32
        )

    def sample(
        self, ctx: llama_cpp.llama_context_p, row: int, logits: npt.NDArray[np.float32]
    ) -> int:
        """The first highest of ``logits`` (batch row ``row``'s) after the biases, which
        are added in place (as the chain's stage does it in its copy)."""
        if self._tokens.size:
            logits[self._tokens] += self._biases
        return int(logits.argmax())

    def close(self) -> None:
        """Nothing native to free."""


def needs_chain(params: SamplingParams) -> bool:
    """Whether ``params`` need the native chain: a draw, a penalty or DRY."""
    return (
        not params.greedy
        or params.repetition_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
        or params.dry.enabled
    )


def make_sampler(
    dry_stages: DryStages,
    n_vocab: int,
    n_ctx: int,
    params: SamplingParams,
    prompt_tokens: Sequence[int],
) -> NativeSampler | GreedySampler:
    """The sampler for one job: the native chain when :func:`needs_chain`, else greedy."""
    if needs_chain(params):
        return NativeSampler(dry_stages, n_vocab, n_ctx, params, prompt_tokens)
    return GreedySampler(params)
