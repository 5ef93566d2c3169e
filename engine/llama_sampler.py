"""SamplingParams as a native llama.cpp sampler chain.

Sampling runs in llama.cpp's C code, token after token, with no Python callback. The chain
applies, in order: logit bias, repetition penalty, frequency/presence penalties, DRY, then
either greedy selection (``temperature == 0``) or top-k, top-p, min-p, temperature and a
seeded draw. Temperature comes last, so the truncation filters see the model's own
distribution (ExLlamaV2's ``temperature_last``).

What each penalty looks at (the same on every backend): the repetition penalty and DRY see the
prompt and the output, within the context window; frequency and presence penalties see only
the output, as in OpenAI's API.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import llama_cpp

from .sampling import SamplingParams

#: A bias at the bottom of the range bans the token outright rather than making it unlikely.
BAN_BIAS = -100.0
_SEED_MODULUS = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED (= the modulus) asks llama.cpp for a random seed


class NativeSampler:
    """One job's sampler chain; :meth:`close` frees it (the chain owns its stages)."""

    def __init__(
        self,
        vocab: llama_cpp.llama_vocab_p,
        n_vocab: int,
        n_ctx: int,
        params: SamplingParams,
        prompt_tokens: Sequence[int],
    ) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        try:
            self._build(vocab, n_vocab, n_ctx, params, prompt_tokens)
        except BaseException:
            self.close()
            raise

    def _build(
        self,
        vocab: llama_cpp.llama_vocab_p,
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
            breakers = [b.encode("utf-8") for b in params.dry.sequence_breakers]
            breaker_array = (ctypes.c_char_p * len(breakers))(*breakers)
            stage = llama_cpp.llama_sampler_init_dry(
                vocab,
                params.dry.multiplier,
                params.dry.base,
                params.dry.allowed_length,
                n_ctx,
                breaker_array,
                len(breakers),
            )
            self._add(stage, history=prompt_tokens)
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

    def sample(self, ctx: llama_cpp.llama_context_p, row: int = -1) -> int:
        """Draw the next token from the logits of batch row ``row`` (default: the last
        evaluated one), and record it."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, row))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
