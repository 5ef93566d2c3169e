"""LiteLLM's ``responses()`` against exloop with a forced web search: the response parses
into LiteLLM's typed ``ResponsesAPIResponse`` (no fallback to untyped dicts)."""

from __future__ import annotations

import os

import pytest

# LiteLLM fetches its model price list from the internet on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from litellm.types.llms.openai import ResponsesAPIResponse  # noqa: E402
from openai.types.responses import (  # noqa: E402
    ResponseFunctionWebSearch,
    ResponseOutputMessage,
)

from tests.fixtures.web import WebFixture  # noqa: E402

from ..conftest import REQUEST_TIMEOUT, ServerProcess  # noqa: E402

# LiteLLM's own types warn on import of its auth helpers (pydantic and ReadOnly TypedDicts).
pytestmark = pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning")

# The server (conftest's ``search_server``) searches the loopback web, one round per response.


@pytest.mark.parametrize("tool", ["web_search", "web_search_preview"])
def test_responses_with_a_forced_web_search(
    search_server: ServerProcess, web: WebFixture, tool: str
) -> None:
    response = litellm.responses(
        model="openai/exloop",
        input="What causes the ocean tides?",
        tools=[{"type": tool, "search_context_size": "low"}],
        tool_choice={"type": tool},
        api_base=f"{search_server.base_url}/v1",
        api_key="unused",
        temperature=0,
        timeout=REQUEST_TIMEOUT,
        max_retries=0,
        extra_body={"grammar": {"type": "regex", "value": "The (Moon|Sun) causes the tides[.]"}},
    )
    assert isinstance(response, ResponsesAPIResponse)
    # The echo is a tool_choice the SDK's types accept (LiteLLM's is the param TypedDict) ...
    assert response.tool_choice == {"type": "web_search_preview"}
    # ... so the response validated instead of falling back to model_construct(), which
    # leaves every output item an untyped dict.
    assert isinstance(response.output[0], ResponseFunctionWebSearch)
    assert isinstance(response.output[-1], ResponseOutputMessage)
    assert "/searxng/search" in web.paths()
