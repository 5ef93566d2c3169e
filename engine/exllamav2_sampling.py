"""SamplingParams as ExLlamaV2 sampler settings, planned without importing ExLlamaV2.

:func:`plan_sampler` turns our settings into a :class:`SamplerPlan`: one value for every field
of ``ExLlamaV2Sampler.Settings`` (exllamav2 0.3.2), so the backend can build each job's
``Settings`` from the plan in one place, setting every field explicitly. That matters because:

* the library defaults are not neutral (``top_k=50``, ``top_p=0.8``, ``temperature=0.8``,
  ``token_repetition_penalty=1.025``): a field left at its default changes the output;
* ``Settings.clone()`` is a shallow copy that shares the DRY state (``ngram_trie``,
  ``ngram_history``) between jobs, and ``greedy_clone()`` copies ``dry_allowed_length`` into
  ``dry_base``: each job gets a fresh ``Settings`` built from its plan instead.

The meaning of each setting is the same as on the CPU backend (see :mod:`.llama_sampler`):

* temperature is applied last (``temperature_last``), so top-k/top-p/min-p see the model's own
  distribution; ``temperature == 0`` is greedy (``top_k=1``, as ``Settings.greedy`` does);
* the repetition penalty and DRY see the prompt and the output;
* frequency and presence penalties see only the output, as in OpenAI's API. ExLlamaV2 applies
  them over the same range as the repetition penalty (the prompt too), so the plan sets them to
  zero in ``Settings`` and the backend applies them itself (:attr:`SamplerPlan.output_penalties`);
* ``logit_bias`` becomes ``token_bias``, a dense tensor over the (padded) vocabulary.

ExLlamaV2 wants DRY sequence breakers as token ids; ours are strings, so every token whose text
contains a breaker breaks a sequence (as ExLlamaV2's own default set is derived).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

from .errors import ContextLengthExceeded
from .sampling import SamplingParams

#: Output tokens a job may reserve when the request sets no ``max_tokens``, whatever its share
#: of the cache (see :func:`cap_new_tokens`).
MIN_DEFAULT_NEW_TOKENS = 512


@dataclass(frozen=True, slots=True)
class OutputPenalties:
    """OpenAI's frequency and presence penalties, over the output tokens only."""

    frequency: float
    presence: float


@dataclass(frozen=True, slots=True)
class SamplerPlan:
    """A value for every field of ``ExLlamaV2Sampler.Settings``, named as it names them.

    ``token_bias`` is sparse here (token id, bias); the backend writes it into a tensor.
    Fields that hold per-job state (``post_sampling_hooks``, ``ngram_trie``,
    ``ngram_history``, ``mirostat_mu``) are not planned: :func:`fresh_state` makes them anew
    for every job.
    """

    token_repetition_penalty: float
    token_repetition_range: int
    token_repetition_decay: int
    token_frequency_penalty: float
    token_presence_penalty: float
    temperature: float
    smoothing_factor: float
    min_temp: float
    max_temp: float
    temp_exponent: float
    top_k: int
    top_p: float
    top_a: float
    min_p: float
    tfs: float
    typical: float
    skew: float
    temperature_last: bool
    mirostat: bool
    mirostat_tau: float
    mirostat_eta: float
    token_bias: tuple[tuple[int, float], ...]
    cfg_scale: float | None
    dry_allowed_length: int
    dry_base: float
    dry_multiplier: float
    dry_sequence_breakers: frozenset[int]
    dry_range: int
    dry_max_ngram: int
    ngram_index: int
    xtc_probability: float
    xtc_threshold: float
    xtc_ignore_tokens: frozenset[int] | None
    #: Applied by the backend, not by ``Settings`` (``None`` when both are zero).
    output_penalties: OutputPenalties | None

    def settings_fields(self) -> dict[str, object]:
        """The values to set on ``Settings``, by field name (``token_bias`` still sparse)."""
        return {name: getattr(self, name) for name in self.__slots__ if name not in _NOT_SETTINGS}


def fresh_state() -> dict[str, object]:
    """New values for the Settings fields that hold a job's state (DRY's n-gram trie and
    history, mirostat's mu, hooks), so that no two jobs share them."""
    return {
        "post_sampling_hooks": [],
        "ngram_trie": None,
        "ngram_history": deque(),
        "mirostat_mu": None,
    }


_NOT_SETTINGS = frozenset({"output_penalties"})


#: Breaker tuples whose token ids are kept (a set can hold most of the vocabulary).
_BREAKER_SETS = 16


class TokenTexts:
    """The decoded text of every token, for mapping DRY breaker strings to token ids."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        self._breakers: OrderedDict[tuple[str, ...], frozenset[int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._texts)

    def containing(self, needles: tuple[str, ...]) -> frozenset[int]:
        """Ids of the tokens whose text contains any of ``needles`` (the last few tuples
        cached; thread-safe)."""
        with self._lock:
            found = self._breakers.get(needles)
            if found is not None:
                self._breakers.move_to_end(needles)
                return found
        found = frozenset(
            token_id
            for token_id, text in enumerate(self._texts)
            if any(needle in text for needle in needles)
        )
        with self._lock:
            self._breakers[needles] = found
            if len(self._breakers) > _BREAKER_SETS:
                self._breakers.popitem(last=False)
        return found


def plan_sampler(params: SamplingParams, tokens: TokenTexts) -> SamplerPlan:
    """The ExLlamaV2 settings for ``params`` (already validated), over ``tokens``' vocabulary."""
    params.check_model(len(tokens))
    if params.greedy:
        temperature, top_k, top_p, min_p = 1.0, 1, 0.0, 0.0
    else:
        temperature, top_k, top_p, min_p = (
            params.temperature,
            params.top_k,
            params.top_p,
            params.min_p,
        )
    dry = params.dry
    penalties = (
        OutputPenalties(params.frequency_penalty, params.presence_penalty)
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        else None
    )
    return SamplerPlan(
        token_repetition_penalty=params.repetition_penalty,
        token_repetition_range=-1,  # the whole sequence: prompt and output
        token_repetition_decay=0,
        token_frequency_penalty=0.0,
        token_presence_penalty=0.0,
        temperature=temperature,
        smoothing_factor=0.0,
        min_temp=0.0,
        max_temp=0.0,
        temp_exponent=1.0,
        top_k=top_k,
        top_p=top_p,
        top_a=0.0,
        min_p=min_p,
        tfs=0.0,
        typical=0.0,
        skew=0.0,
        temperature_last=True,
        mirostat=False,
        mirostat_tau=1.5,
        mirostat_eta=0.1,
        token_bias=tuple(sorted(params.logit_bias.items())),
        cfg_scale=None,
        dry_allowed_length=dry.allowed_length,
        dry_base=dry.base,
        dry_multiplier=dry.multiplier,
        dry_sequence_breakers=(
            tokens.containing(tuple(dry.sequence_breakers)) if dry.enabled else frozenset()
        ),
        dry_range=0,  # unlimited: the prompt and the output
        dry_max_ngram=20,
        ngram_index=0,
        xtc_probability=0.0,
        xtc_threshold=0.1,
        xtc_ignore_tokens=None,
        output_penalties=penalties,
    )


def cap_new_tokens(
    prompt_tokens: int,
    requested: int | None,
    *,
    max_seq_len: int,
    cache_tokens: int,
    max_batch_size: int,
) -> int:
    """How many tokens a job may generate, so that it fits its context window and the cache.

    ExLlamaV2 reserves cache pages for the prompt plus ``max_new_tokens`` when a job starts and
    holds back jobs that do not fit, so an uncapped job serializes the queue. A request with
    ``max_tokens`` gets it, within the context window and the whole cache; one without gets its
    fair share of the cache (``cache_tokens / max_batch_size``, less its prompt), but never
    less than :data:`MIN_DEFAULT_NEW_TOKENS` where the window allows.
    """
    room = min(max_seq_len, cache_tokens) - prompt_tokens
    if room <= 0:
        raise ContextLengthExceeded(
            f"The prompt takes {prompt_tokens} tokens; the context window holds "
            f"{min(max_seq_len, cache_tokens)}, which leaves no room for output."
        )
    if requested is not None:
        return min(requested, room)
    share = cache_tokens // max_batch_size - prompt_tokens
    return min(room, max(share, MIN_DEFAULT_NEW_TOKENS))
