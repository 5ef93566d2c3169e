"""The Agents SDK's Runner with a custom (freeform) tool whose input is constrained by its own
grammar, streamed and not."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, CustomTool, ModelSettings, OpenAIResponsesModel, Runner
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem

from .conftest import SETTINGS, answer

pytestmark = pytest.mark.anyio

#: What the tool accepts: a sum of small numbers, e.g. "12 + 30".
SUM = r"[0-9]{1,3}( \+ [0-9]{1,3}){1,3}"

inputs: list[str] = []


def add(context: Any, text: str) -> str:
    inputs.append(text)
    return str(sum(int(part) for part in text.split("+")))


def calculator_agent(model: OpenAIResponsesModel) -> Agent:
    calculator = CustomTool(
        name="calculator",
        description="Adds numbers written as '12 + 30'.",
        on_invoke_tool=add,
        format={"type": "grammar", "syntax": "regex", "definition": SUM},
    )
    return Agent(
        name="calculator",
        instructions="Use the calculator, then give the result.",
        tools=[calculator],
        model=model,
        # "required" (the only tool): the SDK would name a custom tool as a function.
        model_settings=ModelSettings(
            tool_choice="required",
            extra_body=answer("The result is [0-9]+[.]"),
            **SETTINGS,
        ),
    )


async def test_runner_calls_a_custom_tool(model: OpenAIResponsesModel) -> None:
    inputs.clear()
    result = await Runner.run(calculator_agent(model), "What is 12 + 30?")
    kinds = [type(item) for item in result.new_items]
    assert kinds[:2] == [ToolCallItem, ToolCallOutputItem] and kinds[-1] is MessageOutputItem
    assert getattr(result.new_items[0].raw_item, "type", None) == "custom_tool_call"
    # The input always parses: the grammar decoded it.
    assert len(inputs) == 1
    assert str(result.final_output).startswith("The result is ")


async def test_runner_streams_a_custom_tool(model: OpenAIResponsesModel) -> None:
    inputs.clear()
    run = Runner.run_streamed(calculator_agent(model), "What is 7 + 5?")
    raw_types: list[str] = []
    async for event in run.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
    assert "response.custom_tool_call_input.delta" in raw_types
    assert "response.custom_tool_call_input.done" in raw_types
    assert len(inputs) == 1
    assert str(run.final_output).startswith("The result is ")
