"""The OpenAI Agents SDK's Runner against exloop, unchanged: function and web search tools,
streamed and not (custom tools: see ``test_agents_sdk_custom``)."""

from __future__ import annotations

import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, WebSearchTool, function_tool
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem

from tests.fixtures.web import WebFixture

from .conftest import SETTINGS, answer

pytestmark = pytest.mark.anyio


weather_calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    weather_calls.append(city)
    return f"It is 18 C and sunny in {city}."


def weather_agent(model: OpenAIResponsesModel) -> Agent:
    # The named tool_choice makes the tiny model call the tool; the Runner resets it after
    # the call, so the second turn answers.
    return Agent(
        name="weather",
        instructions="Answer with the weather the tool reports.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(
            tool_choice="get_weather",
            extra_body=answer("It is (warm|sunny) in [A-Z][a-z]+[.]"),
            **SETTINGS,
        ),
    )


async def test_runner_calls_a_function_tool_and_answers(model: OpenAIResponsesModel) -> None:
    weather_calls.clear()
    result = await Runner.run(weather_agent(model), "What is the weather in Paris?")
    kinds = [type(item) for item in result.new_items]
    assert kinds[:2] == [ToolCallItem, ToolCallOutputItem]
    assert kinds[-1] is MessageOutputItem
    assert len(weather_calls) == 1 and weather_calls[0]
    assert str(result.final_output).startswith("It is ")


async def test_runner_streams_a_function_tool_round(model: OpenAIResponsesModel) -> None:
    weather_calls.clear()
    run = Runner.run_streamed(weather_agent(model), "What is the weather in Oslo?")
    raw_types: list[str] = []
    async for event in run.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
    assert "response.function_call_arguments.delta" in raw_types
    assert "response.output_text.delta" in raw_types
    assert raw_types.count("response.completed") == 2
    assert len(weather_calls) == 1
    assert isinstance(run.final_output, str) and run.final_output


def search_agent(model: OpenAIResponsesModel) -> Agent:
    return Agent(
        name="researcher",
        instructions="Search the web, then answer.",
        tools=[WebSearchTool(search_context_size="low")],
        model=model,
        model_settings=ModelSettings(
            tool_choice="web_search",
            extra_body=answer("The (Moon|Sun) causes the tides[.]"),
            **SETTINGS,
        ),
    )


async def test_runner_with_web_search(model: OpenAIResponsesModel, web: WebFixture) -> None:
    result = await Runner.run(search_agent(model), "What causes the ocean tides?")
    searches = [
        item.raw_item
        for item in result.new_items
        if getattr(item.raw_item, "type", "") == "web_search_call"
    ]
    assert searches, [type(item) for item in result.new_items]
    assert result.final_output in {"The Moon causes the tides.", "The Sun causes the tides."}
    assert "/searxng/search" in web.paths()


async def test_runner_streams_web_search(model: OpenAIResponsesModel) -> None:
    run = Runner.run_streamed(search_agent(model), "What causes the ocean tides?")
    raw_types: list[str] = []
    async for event in run.stream_events():
        if event.type == "raw_response_event":
            raw_types.append(event.data.type)
    assert raw_types.index("response.web_search_call.searching") < raw_types.index(
        "response.web_search_call.completed"
    )
    assert raw_types[-1] == "response.completed"
    assert isinstance(run.final_output, str) and run.final_output
