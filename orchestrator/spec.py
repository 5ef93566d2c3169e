"""What a client asked for, validated and normalized: the orchestrator's input.

The server decodes and checks HTTP requests (both APIs) into a :class:`RunSpec`; the
orchestrator never sees raw JSON. Fields the response object echoes keep the client's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from exloop.engine.protocol import Grammar
from exloop.engine.sampling import SamplingParams

from .items import Item
from .resource import ReasoningConfig, ReasoningContext, ReasoningEffort, TextConfig
from .tool_defs import ClientTool, Tool, ToolChoice, UserLocation

SearchContextSize: TypeAlias = Literal["low", "medium", "high"]


@dataclass(frozen=True, slots=True)
class WebSearchOptions:
    """Built-in web search settings, from ``web_search_options`` or a ``web_search`` tool.

    ``forced`` (from ``web_search_options``) asks for a searched answer: the first step always
    searches. A ``web_search`` tool leaves the choice to the model under ``tool_choice``.
    """

    forced: bool
    search_context_size: SearchContextSize = "medium"
    user_location: UserLocation | None = None
    #: The seed schema's descriptions of the search and extract tools shown to the model.
    search_description: str | None = None
    extract_description: str | None = None
    #: ``external_web_access``: False reads the provider's results (titles, URLs, snippets)
    #: and fetches no page.
    live: bool = True


ToolChoiceMode: TypeAlias = Literal["none", "auto", "required"]


@dataclass(frozen=True, slots=True)
class McpToolFilter:
    """OpenAI's MCP tool filter: a tool matches when its name is among ``names`` (if given)
    and its ``readOnlyHint`` equals ``read_only`` (if given)."""

    names: frozenset[str] | None = None
    read_only: bool | None = None

    def matches(self, name: str, read_only: bool) -> bool:
        if self.names is not None and name not in self.names:
            return False
        return self.read_only is None or self.read_only == read_only


@dataclass(frozen=True, slots=True)
class McpApproval:
    """Which calls need the client's approval: those ``always`` matches do; of the others,
    those ``never`` matches do not; the rest do (OpenAI's default is ``"always"``)."""

    never: McpToolFilter | None = None
    always: McpToolFilter | None = None

    def needed(self, name: str, read_only: bool) -> bool:
        if self.always is not None and self.always.matches(name, read_only):
            return True
        return self.never is None or not self.never.matches(name, read_only)


#: ``require_approval: "never"``.
NO_APPROVAL = McpApproval(never=McpToolFilter())


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    """A remote MCP server a request names (a tool of type ``mcp``)."""

    label: str
    url: str
    #: HTTP headers to send, the ``authorization`` token included as a Bearer header.
    headers: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    allowed: McpToolFilter | None = None
    approval: McpApproval = field(default_factory=McpApproval)


@dataclass(frozen=True, slots=True)
class McpChoice:
    """``tool_choice`` ``{"type": "mcp", "server_label", "name"}``: call that server's tool
    (any of its tools when ``name`` is None)."""

    server_label: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """Which tools the model sees and must use, and how many calls it may make.

    ``tools`` are the client's tool definitions (functions, custom tools, namespaces, a
    ``tool_search`` tool), in request order. Tools are named as the model writes them
    (``namespace.tool`` inside a namespace). ``forced`` set means the model must call that one
    tool (``tool_choice`` naming a function or custom tool); ``mode == "required"`` means it
    must call one of the tools it may call. ``allowed`` (``allowed_tools``) limits the tools it
    may call to those names, to every tool of a namespace given as ``"namespace."``, or to
    every tool of an MCP server given as ``"mcp:server_label"``; the others stay in the
    prompt. ``parallel_tool_calls`` false allows one call per model turn; ``max_tool_calls``
    caps the built-in tool calls of the whole response (None: only ``--max-tool-rounds``
    applies).
    """

    tools: tuple[ClientTool, ...] = ()
    mode: ToolChoiceMode = "auto"
    forced: str | None = None
    allowed: frozenset[str] | None = None
    web_search: WebSearchOptions | None = None
    mcp: tuple[McpServerSpec, ...] = ()
    forced_mcp: McpChoice | None = None
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = None

    def allows(self, name: str, server_label: str | None = None) -> bool:
        """Whether ``allowed_tools`` lets the model call the tool it knows as ``name`` (an MCP
        tool of ``server_label``'s)."""
        if self.allowed is None or name in self.allowed:
            return True
        if server_label is not None and f"mcp:{server_label}" in self.allowed:
            return True
        namespace, dot, _ = name.rpartition(".")
        return bool(dot) and f"{namespace}." in self.allowed


@dataclass(frozen=True, slots=True)
class ReasoningOptions:
    """How a thinking model reasons for this request (ignored by models that do not think).

    ``effort`` maps to the template's switch and a thinking budget
    (:mod:`exloop.orchestrator.reasoning`); ``context`` picks the earlier reasoning the model
    sees again (``current_turn``: only since the last user message); ``encrypted`` seals each
    reasoning item into ``encrypted_content`` (``include: ["reasoning.encrypted_content"]``).
    """

    effort: ReasoningEffort | None = None
    context: ReasoningContext = "auto"
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """``context_management: [{"type": "compaction", "compact_threshold": N}]``."""

    #: Prompt tokens past which the conversation is compacted; None: the server's default.
    threshold: int | None = None


@dataclass(frozen=True, slots=True)
class Echo:
    """Request fields the response object reports back unchanged."""

    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = "auto"
    text: TextConfig = field(default_factory=TextConfig)
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = None
    top_logprobs: int = 0
    include: tuple[str, ...] = ()
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One request to run, from either API."""

    #: The new input items (a string input arrives as one user message).
    input: tuple[Item, ...]
    model: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: ToolPolicy = field(default_factory=ToolPolicy)
    instructions: str | None = None
    #: Output constraint: ``text.format`` / ``response_format`` json_schema or json_object,
    #: or the non-OpenAI ``grammar`` field.
    constraint: Grammar | None = None
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: dict[str, str] = field(default_factory=dict)
    reasoning: ReasoningOptions = field(default_factory=ReasoningOptions)
    #: ``context_management``: compact the conversation when the prompt grows past a
    #: threshold (:mod:`exloop.orchestrator.compaction`).
    compaction: CompactionPolicy | None = None
    #: Fields echoed on the response object as the client sent them.
    echo: Echo = field(default_factory=Echo)
