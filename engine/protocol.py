"""The engine protocol: the small typed surface the orchestrator drives.

A backend (llama.cpp on CPU, ExLlamaV2 on GPU) implements :class:`Engine`. The orchestrator
builds a :class:`GenerationRequest` (a prompt, sampling settings, an optional constraint),
submits it, and reads the job's events: :class:`Started` once the backend begins it (a job
may wait for room first), zero or more :class:`Delta`, then exactly one :class:`Finish`.
Nothing here knows about responses, HTTP or tools beyond their definitions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from .reasoning import ThinkingSyntax
from .sampling import SamplingParams

#: A JSON Schema document, as the client sent it.
JsonSchema: TypeAlias = Mapping[str, Any]

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]

#: Why a job ended. ``stop``: a stop sequence matched (never emitted as text);
#: ``length``: the token limit was reached; ``eos``: the model ended its turn (or a
#: constraint was satisfied and can accept nothing more); ``cancelled``:
#: :meth:`GenerationJob.cancel`.
FinishReason: TypeAlias = Literal["stop", "length", "eos", "cancelled"]


FreeformSyntax: TypeAlias = Literal["text", "lark", "regex"]


@dataclass(frozen=True, slots=True)
class FreeformInput:
    """What a freeform tool takes: any text (``text``), or text that a Lark grammar (in
    llguidance's dialect) or a regular expression accepts whole, given as ``definition``."""

    syntax: FreeformSyntax = "text"
    definition: str = ""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call, as it is shown to the model.

    A function tool takes JSON arguments; a freeform tool (``freeform`` set: OpenAI's custom
    tools) takes raw text instead. ``name`` is the name the model writes (a namespaced tool's
    is ``namespace.name``).
    """

    name: str
    description: str | None = None
    parameters: JsonSchema = field(default_factory=dict)
    strict: bool = False
    #: Whether the arguments are generated under ``parameters``. Strict tools always are; a
    #: non-strict tool is too unless its schema does not compile, and then its arguments are
    #: any JSON object.
    guided: bool = True
    freeform: FreeformInput | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: ``arguments`` is the JSON text it generated, or a freeform
    tool's raw input (``freeform``)."""

    call_id: str
    name: str
    arguments: str
    freeform: bool = False


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a chat, before the model's template renders it.

    ``tool_calls`` and ``reasoning`` (the thinking that led to the turn, for models that
    think) are only set on assistant turns; ``tool_call_id`` and ``name`` only on ``tool``
    turns (the result of a call).
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class Chat:
    """A prompt as messages, rendered by the model's own chat template.

    ``assistant_prefix`` is text the assistant's new turn already holds: the orchestrator uses
    it to continue a turn (for example under a tool-argument constraint) without re-rendering.
    ``thinking`` sets the template's thinking switch (``enable_thinking``) when it has one;
    ``None`` leaves the template's default.
    """

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    assistant_prefix: str = ""
    thinking: bool | None = None


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """A prompt given as token ids, used as they are."""

    token_ids: tuple[int, ...]


Prompt: TypeAlias = Chat | TokenPrompt

GrammarKind: TypeAlias = Literal["regex", "json_schema", "lark", "llguidance"]


@dataclass(frozen=True, slots=True)
class Grammar:
    """A constraint on the generated text, enforced token by token with llguidance.

    ``value`` is the pattern or grammar text, or for ``json_schema`` the schema (a mapping, or
    its JSON text); for ``llguidance`` the grammar in llguidance's JSON format.
    """

    kind: GrammarKind
    value: str | JsonSchema


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything one generation job needs."""

    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    constraint: Grammar | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token at a position, its log probability and the top alternatives."""

    token: str
    token_id: int
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    """The backend began the job: it left the queue and holds a place in the batch.

    Sent once, before any :class:`Delta`; a job cancelled or failed while it waited ends
    without it.
    """


@dataclass(frozen=True, slots=True)
class Delta:
    """New output: ``text`` may lag ``token_ids`` while a stop sequence or UTF-8 is pending."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting of one job; ``cached_tokens`` were reused from the KV cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    """The last event of every job."""

    reason: FinishReason
    usage: Usage
    #: The stop sequence that ended the job when ``reason == "stop"``.
    stop_sequence: str | None = None


JobEvent: TypeAlias = Started | Delta | Finish


class GenerationJob(Protocol):
    """A submitted generation. Iterate :meth:`events` once; :meth:`cancel` is idempotent.

    The events are :class:`Started` (once the backend begins the job), deltas, then one
    :class:`Finish`; a job cancelled or failed while still waiting sends no :class:`Started`.

    Cancelling takes effect before the next token: the stream then ends with
    ``Finish(reason="cancelled")``. If the consuming task itself is cancelled, the job is
    cancelled too (the backend frees its resources) and ``CancelledError`` propagates.
    """

    def events(self) -> AsyncIterator[JobEvent]: ...

    def cancel(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineStats:
    """How busy the engine is right now (``/health`` shows it)."""

    #: Jobs generating now.
    running: int
    #: Jobs waiting for a place in the batch (or for cache room), in arrival order.
    queued: int
    #: Jobs the backend generates together at most.
    parallel: int
    #: KV cache tokens in use (running jobs and reusable cached prefixes) and in all.
    cache_used: int
    cache_size: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the orchestrator and server need to know about the loaded model."""

    #: Name reported by ``/v1/models`` unless ``--served-model-name`` overrides it.
    name: str
    backend: Literal["llama.cpp", "exllamav2"]
    context_length: int
    #: The Jinja chat template text the model ships (empty when it ships none).
    chat_template: str
    #: The tool-call format family detected from the template and vocabulary.
    tool_call_format: str
    #: How the template writes reasoning; ``None`` for a model that does not think.
    thinking: ThinkingSyntax | None = None


class Engine(Protocol):
    """A loaded model that renders chats and runs generation jobs.

    Jobs may be submitted concurrently; the backend queues or batches them. No method blocks
    the event loop for longer than bookkeeping.
    """

    @property
    def info(self) -> ModelInfo: ...

    def render(self, chat: Chat) -> str:
        """The prompt text of ``chat`` under the model's chat template."""
        ...

    async def count_tokens(self, chat: Chat) -> int:
        """How many tokens ``chat`` takes once rendered (for context-window checks)."""
        ...

    def stats(self) -> EngineStats:
        """How busy the engine is (bookkeeping only; safe to call from the event loop)."""
        ...

    def arriving(self) -> AbstractContextManager[None]:
        """Note a job on its way: entered as its request's checks begin, left as soon as
        the job is submitted (or the request is refused, or its run ends before it). A
        backend that batches may wait a moment for such jobs before it starts a burst.
        Bookkeeping only; enter and leave it on the event loop."""
        ...

    async def check(self, request: GenerationRequest) -> None:
        """Validate sampling settings and compile the constraint, without generating.

        Compiling runs off the event loop within the engine's budget; cancelling the caller
        stops it. Raises :class:`~exloop.engine.errors.InvalidParameter` or
        :class:`~exloop.engine.errors.InvalidGrammar` (also for a grammar too complex to
        compile within the budget).
        """
        ...

    async def submit(self, request: GenerationRequest) -> GenerationJob:
        """Validate (as :meth:`check`) and queue a job; generation starts when it is iterated
        or at once, as the backend prefers."""
        ...

    async def aclose(self) -> None:
        """Stop every job and free the model."""
        ...
