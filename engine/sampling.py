"""Sampling settings with one meaning on every backend, range-checked in one place.

:meth:`SamplingParams.validate` checks what holds for any model (ranges, and sizes that fit
the native samplers' C integers); :meth:`SamplingParams.check_model` what depends on the
loaded model (token ids in its vocabulary, lengths within its context). How many stop
sequences, breakers or biases a request may carry is the server's policy (its limits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InvalidParameter

#: text-generation-webui's (and the DRY paper's) default sequence breakers.
DEFAULT_DRY_SEQUENCE_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")

MAX_TOP_LOGPROBS = 20
#: The largest value a native sampler's ``int32_t`` parameter takes.
MAX_C_INT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class DrySettings:
    """DRY ("Don't Repeat Yourself") repetition penalty; ``multiplier == 0`` disables it.

    The penalty for extending a repeated sequence of length ``n >= allowed_length`` is
    ``multiplier * base ** (n - allowed_length)``. Defaults follow text-generation-webui.
    """

    multiplier: float = 0.0
    base: float = 1.75
    allowed_length: int = 2
    sequence_breakers: tuple[str, ...] = DEFAULT_DRY_SEQUENCE_BREAKERS

    @property
    def enabled(self) -> bool:
        return self.multiplier > 0.0


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token.

    ``temperature == 0`` is greedy decoding. ``top_k == 0``, ``top_p == 1``, ``min_p == 0``,
    ``repetition_penalty == 1`` and zero frequency/presence penalties each disable their
    filter. ``max_tokens is None`` means up to the context window. ``seed`` makes sampling
    reproducible: the same seed and request give the same output.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    dry: DrySettings = field(default_factory=DrySettings)
    max_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise :class:`InvalidParameter` naming the first field out of range."""
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0.0:
            raise InvalidParameter("top_p must be greater than 0.", param="top_p")
        _check_int("top_k", self.top_k, 0, MAX_C_INT)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, None)
        if self.repetition_penalty == 0.0:
            raise InvalidParameter(
                "repetition_penalty must be greater than 0.", param="repetition_penalty"
            )
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        for token_id, bias in self.logit_bias.items():
            if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
                raise InvalidParameter(
                    f"logit_bias keys must be token ids (non-negative integers), got {token_id!r}.",
                    param="logit_bias",
                )
            _check_range("logit_bias", bias, -100.0, 100.0)
        if any(not s for s in self.stop):
            raise InvalidParameter("stop sequences must not be empty.", param="stop")
        if self.seed is not None:
            _check_int("seed", self.seed, -(2**63), 2**64 - 1)
        _check_range("dry_multiplier", self.dry.multiplier, 0.0, None)
        _check_range("dry_base", self.dry.base, 1.0, None)
        if self.dry.base == 1.0 and self.dry.enabled:
            raise InvalidParameter("dry_base must be greater than 1.", param="dry_base")
        _check_int("dry_allowed_length", self.dry.allowed_length, 1, MAX_C_INT)
        if any(not isinstance(s, str) for s in self.dry.sequence_breakers):
            raise InvalidParameter(
                "dry_sequence_breakers must be strings.", param="dry_sequence_breakers"
            )
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1, None)
        _check_int("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)

    def check_model(self, vocab_size: int, context_length: int | None = None) -> None:
        """Raise :class:`InvalidParameter` for a setting the loaded model cannot honour: a
        biased token outside its vocabulary, a DRY length beyond its context. (A ``top_k``
        beyond the vocabulary keeps every token, as it says.)"""
        for token_id in self.logit_bias:
            if token_id >= vocab_size:
                raise InvalidParameter(
                    f"logit_bias names token {token_id}; the vocabulary has {vocab_size} tokens.",
                    param="logit_bias",
                )
        if context_length is not None and self.dry.allowed_length > context_length:
            raise InvalidParameter(
                f"dry_allowed_length must be at most the context length ({context_length}), "
                f"got {self.dry.allowed_length}.",
                param="dry_allowed_length",
            )


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number, got {value!r}.", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidParameter(f"{name} must be {_bounds(low, high)}, got {value}.", param=name)


def _check_int(name: str, value: int, low: int | None, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{name} must be an integer, got {value!r}.", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidParameter(f"{name} must be {_bounds(low, high)}, got {value}.", param=name)


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        return f"at least {low}"
    return f"at most {high}"
