"""Every error over HTTP answers with OpenAI's error object, the right status and the field at
fault, and the SDK raises the matching exception."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from .conftest import ServerProcess

WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error object of a JSON error answer with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_malformed_json(http: httpx.Client) -> None:
    for path in ("/v1/responses", "/v1/chat/completions"):
        response = http.post(
            path, content=b'{"input": "hi",', headers={"content-type": "application/json"}
        )
        error = error_of(response, 400)
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    error = error_of(http.get("/v1/nothing/here"), 404)
    assert error["code"] == "unknown_url"
    response = http.get("/v1/chat/completions")
    error = error_of(response, 405)
    assert response.headers["allow"] == "POST"
    assert error_of(http.put("/v1/responses/resp_x"), 405)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_unknown"),
        ("DELETE", "/v1/responses/resp_unknown"),
        ("POST", "/v1/responses/resp_unknown/cancel"),
        ("GET", "/v1/responses/resp_unknown/input_items"),
        ("GET", "/v1/responses/resp_unknown?stream=true"),
    ],
)
def test_unknown_response_id(http: httpx.Client, method: str, path: str) -> None:
    error = error_of(http.request(method, path), 404)
    assert error["param"] == "response_id"


def test_sdk_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")


def test_unknown_previous_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="m", input="hi", previous_response_id="resp_gone")
    assert info.value.param == "previous_response_id"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"max_tool_calls": -1}, "max_tool_calls"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"background": True, "store": False}, "background"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
    ],
)
def test_invalid_request_names_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/responses", body=body, cast_to=httpx.Response)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


def test_broken_tool_schema_names_the_tool(http: httpx.Client) -> None:
    broken = {**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": 7}}}}
    error = error_of(http.post("/v1/responses", json={"input": "hi", "tools": [broken]}), 400)
    assert error["param"] == "tools[0].parameters"
    assert "weather" in error["message"]
    nested = {"type": "function", "function": {"name": "lookup", "parameters": {"required": 1}}}
    error = error_of(
        http.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [nested],
            },
        ),
        400,
    )
    assert error["param"] == "tools[0].function.parameters"
    assert "lookup" in error["message"]


def test_invalid_grammar_names_where_it_came_from(http: httpx.Client) -> None:
    error = error_of(
        http.post(
            "/v1/responses", json={"input": "hi", "grammar": {"type": "regex", "value": "(a"}}
        ),
        400,
    )
    assert error["param"] == "grammar"
    lark = {"type": "lark", "value": "start: undefined_rule"}
    assert (
        error_of(http.post("/v1/responses", json={"input": "hi", "grammar": lark}), 400)["param"]
        == "grammar"
    )
    # A valid JSON Schema document that does not compile (a reference to nothing).
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    error = error_of(
        http.post(
            "/v1/responses",
            json={
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "x", "schema": dangling}},
            },
        ),
        400,
    )
    assert error["param"] == "text.format"
    error = error_of(
        http.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": dangling},
                },
            },
        ),
        400,
    )
    assert error["param"] == "response_format"


def test_context_length_exceeded(http: httpx.Client) -> None:
    error = error_of(
        http.post("/v1/responses", json={"input": "word " * 12000, "truncation": "disabled"}),
        400,
    )
    assert error["code"] == "context_length_exceeded"


def test_a_stream_that_cannot_start_is_a_json_error(http: httpx.Client) -> None:
    response = http.post("/v1/responses", json={"input": "hi", "stream": True, "top_k": -1})
    assert error_of(response, 400)["param"] == "top_k"


def test_chat_errors(client: openai.OpenAI, http: httpx.Client) -> None:
    missing = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    error = error_of(missing, 400)
    assert (error["param"], error["code"]) == ("model", "missing_required_parameter")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=0
        )
    assert info.value.param == "max_completion_tokens"


def test_cancel_needs_a_background_response(http: httpx.Client) -> None:
    created = http.post("/v1/responses", json={"input": "Say hi.", "max_output_tokens": 4})
    assert created.status_code == 200
    response_id = created.json()["id"]
    error = error_of(http.post(f"/v1/responses/{response_id}/cancel"), 400)
    assert error["param"] == "response_id"


def test_api_key(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--api-key", "sesame")
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        missing = http.get("/v1/models")
        assert error_of(missing, 401)["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer open"})
        assert error_of(wrong, 401)["code"] == "invalid_api_key"
        right = http.get("/v1/models", headers={"Authorization": "Bearer sesame"})
        assert right.status_code == 200
        assert right.json()["data"][0]["object"] == "model"
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def test_api_key_from_the_environment(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"EXLOOP_API_KEY": "from-env"})
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        assert http.get("/v1/models").status_code == 401
        ok = http.get("/v1/models", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200
