"""Schemathesis against a real server: valid and invalid requests generated from the API's
OpenAPI document, none of which may get a 5xx (``not_a_server_error``).

The document is the server's own ``/openapi.json`` when it serves one; until then it is
derived here from the msgspec request types the server decodes with, restricted to the routes
it serves. The server runs with a small context so that any request that does generate ends
quickly, and searches a closed local port; the examples per route are few, so the run stays
short.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import msgspec
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from exloop.server.chat_request import ChatRequest
from exloop.server.responses_request import ResponsesRequest

from .conftest import ServerProcess

#: Examples per route and mode (valid, invalid), drawn deterministically.
EXAMPLES = 15


def derived_document() -> dict[str, Any]:
    """An OpenAPI 3.1 document of the routes served, with the request bodies' schemas taken
    from the msgspec types the server decodes them into."""
    (responses, chat), components = msgspec.json.schema_components(
        [ResponsesRequest, ChatRequest], ref_template="#/components/schemas/{name}"
    )
    # Valid requests generate: a token or two is enough to exercise the whole path. (An enum,
    # as schemathesis writes a JSON Schema integer as 1.0 too, which msgspec refuses.)
    for name, field in (("ResponsesRequest", "max_output_tokens"), ("ChatRequest", "max_tokens")):
        components[name]["properties"][field] = {"enum": [1, 2]}
        components[name].setdefault("required", []).append(field)
    components["ResponsesRequest"]["required"].append("input")
    answer = {"default": {"description": "A JSON object, or OpenAI's error object"}}
    response_id = {
        "name": "response_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }

    def operation(
        parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"responses": answer, "parameters": parameters or []}
        if body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        return spec

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    return {
        "openapi": "3.1.0",
        "info": {"title": "exloop", "version": "1"},
        "paths": {
            "/v1/responses": {"post": operation(body=responses)},
            "/v1/responses/{response_id}": {
                "get": operation(
                    [
                        response_id,
                        query("stream", {"type": "string"}),
                        query("starting_after", {"type": "integer"}),
                    ]
                ),
                "delete": operation([response_id]),
            },
            "/v1/responses/{response_id}/cancel": {"post": operation([response_id])},
            "/v1/responses/{response_id}/input_items": {
                "get": operation(
                    [
                        response_id,
                        query("limit", {"type": "integer"}),
                        query("order", {"type": "string"}),
                        query("after", {"type": "string"}),
                        query("before", {"type": "string"}),
                    ]
                )
            },
            "/v1/chat/completions": {"post": operation(body=chat)},
            "/v1/models": {"get": operation()},
            "/v1/models/{model}": {
                "get": operation(
                    [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ]
                )
            },
            "/health": {"get": operation()},
        },
        "components": {"schemas": components},
    }


def api_document(base_url: str) -> dict[str, Any]:
    """The server's own document when it serves one, else :func:`derived_document`."""
    served = httpx.get(f"{base_url}/openapi.json", timeout=30.0)
    if served.status_code == 200:
        document: dict[str, Any] = served.json()
        return document
    return derived_document()


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerProcess]:
    # A port held bound but not listening: searches fail at once (connection refused).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        searxng = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with ServerProcess(
            "--n-ctx", "256", "--search-provider", "searxng", "--searxng-url", searxng
        ) as server:
            yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(api_document(fuzzed_server.base_url))
    schema.config.update(base_url=fuzzed_server.base_url, request_timeout=120)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    # Hypothesis driven directly: schemathesis's pytest loader does not run on pytest 9.
    operations = sum(1 for _ in api_schema.get_all_operations())

    @hypothesis.settings(
        max_examples=EXAMPLES * operations,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=api_schema.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    run()
