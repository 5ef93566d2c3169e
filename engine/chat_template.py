"""Rendering a :class:`~exloop.engine.protocol.Chat` with the model's own Jinja chat template.

The template runs as Hugging Face's ``apply_chat_template`` runs it: a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, the
globals ``raise_exception`` and ``strftime_now``, and a ``tojson`` filter that is plain
``json.dumps`` (Jinja's own escapes HTML). It receives ``messages``, ``tools``,
``add_generation_prompt=True``, ``bos_token`` and ``eos_token``; ``chat.assistant_prefix`` is
appended after the generation prompt. A model that ships no template gets ChatML.

Messages take OpenAI's shape. ``developer`` turns become ``system`` unless the template knows
the ``developer`` role. Assistant calls are ``tool_calls`` entries ``{"id", "type":
"function", "function": {"name", "arguments"}}`` with ``arguments`` parsed into an object: the
templates of Qwen 2.5 and Llama 3.1 write it with ``| tojson``, so a JSON string would come out
quoted twice. Tool results are ``tool`` turns with ``tool_call_id`` and ``name``.

Templates without tool support
------------------------------
A template that never mentions ``tools`` (SmolLM2's, plain ChatML) cannot show the model its
tools, so the chat is rewritten before rendering:

* the tool prompt of the model's tool-call format (``ToolCallFormat.system_prompt``) is
  appended to the first system message, or becomes a system message of its own at the start.
  For the ``exloop`` fallback format it reads::

      You can call the following tools:

      - get_weather: Current weather of a city.
        Arguments (JSON Schema): {"type": "object", "properties": {"city": ...}, ...}

      To call a tool, write the call exactly like this, with the arguments as a JSON object:
      <tool_call>{"name": "get_weather", "arguments": {"city": "..."}}</tool_call>
      You may write several calls one after another. Each result comes back to you between
      <tool_response> and </tool_response>. If no tool is needed, answer directly.

* an assistant turn's calls are written after its text as the format writes them
  (``ToolCallFormat.render_calls``), so the model sees its own syntax in the history;
* tool results become ``<tool_response name="...">...</tool_response>`` text
  (``ToolCallFormat.render_result``) in a ``user`` turn (consecutive results share one turn),
  or in the template's own ``tool`` role when it has one.

Reasoning
---------
A template that writes ``<think>`` blocks (:mod:`.reasoning`) gets ``chat.thinking`` as its
switch variable (``enable_thinking``) when it has one, and an assistant turn's ``reasoning`` as
``reasoning_content`` when it reads that, or else as a think block before the turn's content.
A template without thinking never sees reasoning.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InvalidParameter
from .protocol import Chat, ChatMessage, ToolCall, ToolSpec
from .reasoning import ThinkingSyntax, detect_thinking
from .tool_calls.base import ToolCallFormat
from .tool_calls.prompt import freeform_note

#: The template used when a model ships none.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplate:
    """A model's chat template, compiled once; :meth:`render` is thread-safe.

    Raises ValueError when the template does not compile (a broken model file).
    """

    def __init__(
        self, source: str, *, bos_token: str, eos_token: str, tool_format: ToolCallFormat
    ) -> None:
        self.source = source or CHATML
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._format = tool_format
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlocks]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(self.source)
        except TemplateError as exc:
            raise ValueError(f"The model's chat template does not compile: {exc}") from exc
        self._native_tools = "tools" in self.source
        #: How the template writes reasoning (None: the model does not think).
        self.thinking: ThinkingSyntax | None = detect_thinking(self.source)
        self._developer = "developer" in self.source
        self._tool_role = self._native_tools or "'tool'" in self.source or '"tool"' in self.source

    @property
    def supports_tools(self) -> bool:
        """Whether the template renders tools, calls and results itself; when not, they are
        rendered through the tool-call format's fallback prompt and syntax."""
        return self._native_tools

    def render(self, chat: Chat) -> str:
        """The prompt text of ``chat``, ending with the assistant's generation prompt and
        ``chat.assistant_prefix``.

        Raises :class:`~exloop.engine.errors.InvalidParameter` when the template rejects the
        conversation (for example with ``raise_exception`` on roles that do not alternate).
        """
        extra: dict[str, Any] = {}
        if self.thinking is not None and self.thinking.switch and chat.thinking is not None:
            extra[self.thinking.switch] = chat.thinking
        try:
            prompt = self._render(chat.messages, chat.tools, extra)
        except TemplateError as exc:
            if not (self._native_tools and any(len(m.tool_calls) > 1 for m in chat.messages)):
                raise _rejected(exc) from exc
            # Llama 3.1's template, for one, refuses parallel calls in one turn: show them
            # as turns of one call each, every result right after its call.
            try:
                prompt = self._render(_one_call_per_turn(chat.messages), chat.tools, extra)
            except TemplateError as retry_exc:
                raise _rejected(retry_exc) from retry_exc
        return prompt + chat.assistant_prefix

    def _render(
        self, history: Sequence[ChatMessage], tools: Sequence[ToolSpec], extra: dict[str, Any]
    ) -> str:
        if self._native_tools:
            messages = [self._native(message) for message in history]
            listed = [_tool(spec) for spec in tools] or None
        else:
            messages = self._rewritten(history, tools)
            listed = None
        return self._template.render(
            messages=messages,
            tools=listed,
            add_generation_prompt=True,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
            **extra,
        )

    def _role(self, message: ChatMessage) -> str:
        if message.role == "developer" and not self._developer:
            return "system"
        return message.role

    def _turn(self, message: ChatMessage, content: str) -> dict[str, Any]:
        """A message for the template: role, content, and the turn's reasoning as the
        template reads it."""
        rendered: dict[str, Any] = {"role": self._role(message), "content": content}
        thinking = self.thinking
        if message.reasoning and thinking is not None:
            if thinking.reads_reasoning_content:
                rendered["reasoning_content"] = message.reasoning
            else:
                rendered["content"] = thinking.block(message.reasoning) + content
        return rendered

    def _native(self, message: ChatMessage) -> dict[str, Any]:
        rendered = self._turn(message, message.content)
        # Templates test `'tool_calls' in message`, so the key is present only with calls.
        if message.tool_calls:
            rendered["tool_calls"] = [_call(call) for call in message.tool_calls]
        if message.role == "tool":
            rendered["tool_call_id"] = message.tool_call_id
            rendered["name"] = message.name
        return rendered

    def _rewritten(
        self, history: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> list[dict[str, Any]]:
        """The messages of a template without tool support, calls and results as text."""
        messages: list[dict[str, Any]] = []
        result_role = "tool" if self._tool_role else "user"
        previous: ChatMessage | None = None
        for message in history:
            if message.role == "tool":
                text = self._format.render_result(
                    message.name, message.tool_call_id, message.content
                )
                if previous is not None and previous.role == "tool":
                    messages[-1]["content"] += "\n" + text
                else:
                    messages.append({"role": result_role, "content": text})
            else:
                content = message.content
                if message.tool_calls:
                    calls = self._format.render_calls(message.tool_calls)
                    content = f"{content}\n{calls}" if content else calls
                messages.append(self._turn(message, content))
            previous = message
        if tools:
            prompt = self._format.system_prompt(tools)
            system = next((m for m in messages if m["role"] == "system"), None)
            if system is None:
                messages.insert(0, {"role": "system", "content": prompt})
            else:
                system["content"] = (
                    f"{system['content']}\n\n{prompt}" if system["content"] else prompt
                )
        return messages


class _GenerationBlocks(Extension):
    """Hugging Face's ``{% generation %}`` blocks mark the assistant's text for training
    masks; rendering keeps their content and ignores the mark."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares the attribute as a plain set)

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _rejected(exc: TemplateError) -> InvalidParameter:
    return InvalidParameter(
        f"The model's chat template rejected the conversation: {exc}", param="messages"
    )


def _one_call_per_turn(history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Assistant turns with several calls split into one turn per call, each followed by its
    result; results that match no call keep their place after the last one."""
    split: list[ChatMessage] = []
    position = 0
    while position < len(history):
        message = history[position]
        position += 1
        if len(message.tool_calls) < 2:
            split.append(message)
            continue
        results: list[ChatMessage] = []
        while position < len(history) and history[position].role == "tool":
            results.append(history[position])
            position += 1
        for number, call in enumerate(message.tool_calls):
            split.append(
                replace(message, content=message.content if number == 0 else "", tool_calls=(call,))
            )
            answer = next((r for r in results if r.tool_call_id == call.call_id), None)
            if answer is not None:
                results.remove(answer)
                split.append(answer)
        split.extend(results)
    return split


def _tool(spec: ToolSpec) -> dict[str, Any]:
    """A tool as templates list it; a freeform tool is a function without parameters whose
    description says what its raw input is."""
    function: dict[str, Any] = {"name": spec.name}
    description = spec.description
    if spec.freeform is not None:
        note = freeform_note(spec.freeform)
        description = f"{description}\n{note}" if description else note
    if description is not None:
        function["description"] = description
    parameters = spec.parameters if spec.freeform is None else {}
    function["parameters"] = dict(parameters) or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _call(call: ToolCall) -> dict[str, Any]:
    arguments = call.arguments if call.freeform else _arguments(call.arguments)
    return {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
    }


def _arguments(text: str) -> Any:
    """The arguments as an object when they are a JSON object, else the text unchanged."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)
