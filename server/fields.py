"""Request fields both APIs share, and the checks and sampling settings made of them.

``/v1/responses`` and ``/v1/chat/completions`` take the same sampling settings, tools, tool
choice, output formats and non-OpenAI extensions (``top_k``, DRY, ``grammar``,
``web_search_options``); :class:`CommonFields` declares them once. Tools are validated in
:mod:`.tool_fields` and :mod:`.tool_choice`, output constraints in :mod:`.format_fields`; sizes
against the server's :class:`~.limits.Limits`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar

import msgspec

from exloop.engine.errors import InvalidParameter
from exloop.engine.sampling import DrySettings, SamplingParams
from exloop.orchestrator.spec import ToolPolicy
from exloop.orchestrator.tool_defs import LoadedTool, Tool, ToolChoice

from .errors import invalid_request
from .format_fields import GrammarField, ResponseFormatField
from .limits import Limits
from .schema_bounds import SchemaBudget
from .tool_choice import ToolChoiceField, tool_policy
from .tool_fields import ToolField, WebSearchOptionsField, tools_field

T = TypeVar("T")

#: OpenAI's limits on ``metadata``.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# -- the shared request fields -------------------------------------------------------------


class CommonFields(msgspec.Struct, kw_only=True, frozen=True):
    """Fields both endpoints accept, with OpenAI's names (and mistral.rs's extensions)."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_sequence_breakers: list[str] | None = None
    grammar: GrammarField | None = None
    response_format: ResponseFormatField | None = None
    tools: list[ToolField] | None = None
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    web_search_options: WebSearchOptionsField | None = None
    metadata: dict[str, str] | None = None
    n: int | None = None
    service_tier: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


def check_unsupported(fields: CommonFields) -> None:
    """Refuse values the server accepts the field of but cannot honour."""
    if fields.n is not None and fields.n != 1:
        raise invalid_request("Only n=1 is supported.", "n", "unsupported_value")
    check_metadata(fields.metadata)


def request_tools(
    fields: CommonFields, budget: SchemaBudget, loaded: Iterable[LoadedTool] = ()
) -> tuple[ToolPolicy, tuple[Tool, ...], ToolChoice]:
    """The tools of a request (both APIs): the policy the orchestrator follows, and ``tools``
    and ``tool_choice`` as the response echoes them. ``loaded`` are the tools the input's
    items add or load, which ``tool_choice`` may name too."""
    tools = tools_field(fields.tools, budget).with_loaded(loaded)
    policy, tool_choice = tool_policy(
        tools,
        fields.tool_choice,
        fields.web_search_options,
        parallel_tool_calls=fields.parallel_tool_calls,
        max_tool_calls=fields.max_tool_calls,
    )
    return policy, tools.echo, tool_choice


def check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise invalid_request(
            f"metadata may hold at most {MAX_METADATA_PAIRS} pairs, got {len(metadata)}.",
            "metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise invalid_request(
                f"metadata keys may be at most {MAX_METADATA_KEY} characters; {key[:20]!r}... "
                f"has {len(key)}.",
                "metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise invalid_request(
                f"metadata values may be at most {MAX_METADATA_VALUE} characters; the value of "
                f"{key!r} has {len(value)}.",
                "metadata",
            )


# -- sampling ------------------------------------------------------------------------------


#: A token id as ``logit_bias`` spells it: decimal digits only (``int()`` would also take
#: ``" 1"``, ``"1_000"`` and ``"+1"``).
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def sampling_params(
    fields: CommonFields,
    *,
    max_tokens: int | None,
    max_tokens_param: str,
    logprobs: bool,
    limits: Limits,
) -> SamplingParams:
    """The sampling settings, range-checked and within the server's limits; errors name the
    field as this endpoint calls it."""
    check_sizes(fields, limits)
    logit_bias: dict[int, float] = {}
    for key, bias in (fields.logit_bias or {}).items():
        if not _TOKEN_ID.fullmatch(key):
            raise invalid_request(
                f"logit_bias keys must be token ids (decimal integers), got {key!r}.",
                "logit_bias",
            )
        logit_bias[int(key)] = bias
    stop = fields.stop if fields.stop is not None else ()
    # Unset fields take the engine's defaults (OpenAI's, where OpenAI has the field).
    default, dry = SamplingParams(), DrySettings()
    params = SamplingParams(
        temperature=_or(fields.temperature, default.temperature),
        top_p=_or(fields.top_p, default.top_p),
        top_k=_or(fields.top_k, default.top_k),
        min_p=_or(fields.min_p, default.min_p),
        repetition_penalty=_or(fields.repetition_penalty, default.repetition_penalty),
        frequency_penalty=_or(fields.frequency_penalty, default.frequency_penalty),
        presence_penalty=_or(fields.presence_penalty, default.presence_penalty),
        logit_bias=logit_bias,
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=fields.seed,
        dry=DrySettings(
            multiplier=_or(fields.dry_multiplier, dry.multiplier),
            base=_or(fields.dry_base, dry.base),
            allowed_length=_or(fields.dry_allowed_length, dry.allowed_length),
            sequence_breakers=(
                tuple(fields.dry_sequence_breakers)
                if fields.dry_sequence_breakers is not None
                else dry.sequence_breakers
            ),
        ),
        max_tokens=max_tokens,
        logprobs=logprobs,
        top_logprobs=_or(fields.top_logprobs, default.top_logprobs),
    )
    try:
        params.validate()
    except InvalidParameter as exc:
        param = max_tokens_param if exc.param == "max_tokens" else exc.param
        message = exc.message.replace("max_tokens", max_tokens_param)
        raise invalid_request(message, param, "invalid_value") from None
    return params


def check_sizes(fields: CommonFields, limits: Limits) -> None:
    """Refuse more stop sequences, DRY breakers or biases (or longer ones) than the limits
    allow: each costs the sampler work on every job."""
    stop = [fields.stop] if isinstance(fields.stop, str) else fields.stop or []
    _check_strings("stop", stop, limits.max_stop_sequences, limits.max_stop_length)
    _check_strings(
        "dry_sequence_breakers",
        fields.dry_sequence_breakers or [],
        limits.max_dry_breakers,
        limits.max_dry_breaker_length,
    )
    entries = len(fields.logit_bias or {})
    if entries > limits.max_logit_bias:
        raise invalid_request(
            f"logit_bias may hold at most {limits.max_logit_bias} entries, got {entries}.",
            "logit_bias",
        )


def _check_strings(param: str, values: list[str], count: int, length: int) -> None:
    if len(values) > count:
        raise invalid_request(
            f"{param} may hold at most {count} strings, got {len(values)}.", param
        )
    for value in values:
        if len(value) > length:
            raise invalid_request(
                f"Each of {param} may be at most {length} characters; one has {len(value)}.",
                param,
            )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
