"""Chat templates: SmolLM2's real template (no tool support), a Qwen-style template that renders
tools itself, and ChatML for models without a template."""

from __future__ import annotations

import json

import llama_cpp
import pytest

from exloop.engine.chat_template import ChatTemplate
from exloop.engine.errors import InvalidParameter
from exloop.engine.protocol import Chat, ChatMessage, ToolCall, ToolSpec
from exloop.engine.tool_calls import detect_format, get_format

WEATHER = ToolSpec(
    "get_weather",
    "Current weather of a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
TOOL_TURNS = (
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "Checking.", tool_calls=(CALL,)),
    ChatMessage("tool", "18 C, sunny", tool_call_id="call_1", name="get_weather"),
)

# Written in the manner of Qwen 2.5's template: tools listed with `tojson`, calls written from
# the `arguments` object, results wrapped in <tool_response> inside a user turn.
QWEN_STYLE = """
{%- if tools %}
<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are helpful.' }}

# Tools
<tools>
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}
<|im_start|>assistant
{{ message.content }}
{% for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}
<|im_end|>
{% elif message.role == 'tool' %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}
"""


@pytest.fixture(scope="module")
def smollm2_source(vocab_model: llama_cpp.Llama) -> str:
    source = vocab_model.metadata["tokenizer.chat_template"]
    assert "tools" not in source
    return source


def template(source: str, tool_format: str = "exloop") -> ChatTemplate:
    return ChatTemplate(
        source,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        tool_format=get_format(tool_format),
    )


def test_smollm2_renders_system_and_turns(smollm2_source: str) -> None:
    chat = Chat(
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello!"),
            ChatMessage("user", "2+2?"),
        )
    )
    rendered = template(smollm2_source).render(chat)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_default_system_prompt_and_developer_role(smollm2_source: str) -> None:
    rendered = template(smollm2_source).render(Chat(messages=(ChatMessage("user", "Hi"),)))
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    developer = Chat(
        messages=(ChatMessage("developer", "Answer in French."), ChatMessage("user", "Hi"))
    )
    rendered = template(smollm2_source).render(developer)
    assert rendered.startswith("<|im_start|>system\nAnswer in French.<|im_end|>\n")
    assert "SmolLM" not in rendered and "developer" not in rendered


def test_smollm2_tools_calls_and_results_through_the_fallback(smollm2_source: str) -> None:
    chat = Chat(
        messages=(ChatMessage("system", "Be brief."), *TOOL_TURNS),
        tools=(WEATHER,),
        assistant_prefix="It is",
    )
    rendered = template(smollm2_source).render(chat)
    system, user, assistant, result, prompt = rendered.split("<|im_end|>\n")
    fallback = get_format("exloop")
    assert system == f"<|im_start|>system\nBe brief.\n\n{fallback.system_prompt((WEATHER,))}"
    assert json.dumps(WEATHER.parameters) in system
    assert user == "<|im_start|>user\nWeather in Paris?"
    assert assistant == (
        '<|im_start|>assistant\nChecking.\n<tool_call>{"name": "get_weather", '
        '"arguments": {"city": "Paris"}}</tool_call>'
    )
    assert result == (
        '<|im_start|>user\n<tool_response name="get_weather">\n18 C, sunny\n</tool_response>'
    )
    assert prompt == "<|im_start|>assistant\nIt is"


def test_fallback_creates_a_system_message_and_joins_consecutive_results(
    smollm2_source: str,
) -> None:
    second = ToolCall("call_2", "get_weather", '{"city": "Oslo"}')
    chat = Chat(
        messages=(
            ChatMessage("user", "Paris and Oslo?"),
            ChatMessage("assistant", tool_calls=(CALL, second)),
            ChatMessage("tool", "18 C", tool_call_id="call_1", name="get_weather"),
            ChatMessage("tool", "2 C", tool_call_id="call_2", name="get_weather"),
        ),
        tools=(WEATHER,),
    )
    rendered = template(smollm2_source).render(chat)
    assert rendered.startswith("<|im_start|>system\nYou can call the following tools:")
    assert "SmolLM" not in rendered
    assert rendered.count("<|im_start|>user\n") == 2
    assert '18 C\n</tool_response>\n<tool_response name="get_weather">\n2 C' in rendered
    assert (
        '</tool_call><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}' in rendered
    )
    assert not template(smollm2_source).supports_tools


def test_qwen_style_template_renders_tools_natively() -> None:
    qwen = template(QWEN_STYLE, "hermes")
    assert qwen.supports_tools
    rendered = qwen.render(Chat(messages=TOOL_TURNS, tools=(WEATHER,)))
    listed = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    assert f"<tools>\n{json.dumps(listed)}\n</tools>" in rendered
    # The arguments arrive as an object: `tojson` writes them once, not as a quoted string.
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        in rendered
    )
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    assert "You can call" not in rendered


def test_arguments_that_are_not_an_object_pass_as_text() -> None:
    odd = ToolCall("call_9", "get_weather", "not json")
    chat = Chat(messages=(ChatMessage("assistant", tool_calls=(odd,)),), tools=(WEATHER,))
    assert '"arguments": "not json"' in template(QWEN_STYLE, "hermes").render(chat)


def test_no_template_means_chatml() -> None:
    chat = Chat(messages=(ChatMessage("user", "Hi"),), assistant_prefix="Sure")
    assert template("").render(chat) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nSure"
    )


def test_hf_globals_filters_and_extensions() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m.content | tojson(indent=1) }}{% endfor %}|{{ strftime_now('%Y') | length }}"
        "|{{ bos_token }}{{ eos_token }}|{{ {'é': '<b>'} | tojson }}"
    )
    rendered = template(source).render(
        Chat(messages=(ChatMessage("user", "a\nb"), ChatMessage("user", "unseen")))
    )
    assert rendered == '"a\\nb"|4|<|im_start|><|im_end|>|{"é": "<b>"}'


def test_template_errors_are_client_errors() -> None:
    strict = template(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Start with a user turn') }}"
        "{% endif %}{{ messages[0].content }}"
    )
    with pytest.raises(InvalidParameter, match="Start with a user turn") as caught:
        strict.render(Chat(messages=(ChatMessage("assistant", "Hi"),)))
    assert caught.value.param == "messages"


def test_sandbox_refuses_unsafe_templates() -> None:
    unsafe = template("{{ messages.append(messages[0]) }}")
    with pytest.raises(InvalidParameter, match="unsafe|not safely"):
        unsafe.render(Chat(messages=(ChatMessage("user", "Hi"),)))


def test_broken_template_fails_at_load() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        template("{% for m in messages %}")


# In the manner of Llama 3.1's template: one call per assistant turn, arguments via `tojson`.
SINGLE_CALL_STYLE = """
{%- for message in messages %}
{%- if 'tool_calls' in message %}
{%- if message.tool_calls | length != 1 %}{{ raise_exception('Only single tool-calls at once!') }}{% endif %}
[call {{ message.tool_calls[0].function.name }} {{ message.tool_calls[0].function.arguments | tojson }}]
{%- elif message.role == 'tool' %}
[result {{ message.tool_call_id }}: {{ message.content }}]
{%- else %}
[{{ message.role }}: {{ message.content }}]
{%- endif %}
{%- endfor %}
{%- if tools %}[{{ tools | length }} tools]{% endif %}
"""  # noqa: E501 (a Jinja template: its lines are as the model family writes them)


def test_parallel_calls_become_one_call_per_turn_when_the_template_insists() -> None:
    second = ToolCall("call_2", "get_weather", '{"city": "Oslo"}')
    chat = Chat(
        messages=(
            ChatMessage("user", "Paris and Oslo?"),
            ChatMessage("assistant", "Both.", tool_calls=(CALL, second)),
            ChatMessage("tool", "2 C", tool_call_id="call_2", name="get_weather"),
            ChatMessage("tool", "18 C", tool_call_id="call_1", name="get_weather"),
        ),
        tools=(WEATHER,),
    )
    rendered = template(SINGLE_CALL_STYLE, "llama3").render(chat)
    assert rendered == (
        "[user: Paris and Oslo?]"
        '[call get_weather {"city": "Paris"}][result call_1: 18 C]'
        '[call get_weather {"city": "Oslo"}][result call_2: 2 C]'
        "[1 tools]"
    )


def test_a_template_error_without_parallel_calls_is_not_retried() -> None:
    chat = Chat(messages=(ChatMessage("user", "Hi"),), tools=(WEATHER,))
    failing = template(SINGLE_CALL_STYLE + "{{ raise_exception('no') }}", "llama3")
    with pytest.raises(InvalidParameter, match="no"):
        failing.render(chat)


def test_generation_blocks_render_their_content() -> None:
    source = (
        "{% for m in messages %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endfor %}"
    )
    chat = Chat(messages=(ChatMessage("user", "a"), ChatMessage("assistant", "b")))
    assert template(source).render(chat) == "<a><b>"


def test_the_default_model_gets_the_fallback_format(smollm2_source: str) -> None:
    assert (
        detect_format(smollm2_source, ("<|im_start|>", "<|im_end|>", "<|endoftext|>")) == "exloop"
    )
