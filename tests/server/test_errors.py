"""The one mapping from exceptions to OpenAI's error answers."""

from __future__ import annotations

import msgspec
import pytest

from exloop.engine.errors import (
    ConstraintFailed,
    ContextLengthExceeded,
    GenerationFailed,
    GrammarTooComplex,
    InvalidGrammar,
    InvalidParameter,
    ModelNotFound,
)
from exloop.orchestrator.errors import InvalidRequest, InvalidState, ResponseNotFound
from exloop.server.errors import ApiError, to_api_error


@pytest.mark.parametrize(
    ("exc", "status", "param", "code"),
    [
        (InvalidParameter("bad", param="top_p"), 400, "top_p", "invalid_value"),
        (InvalidGrammar("bad", param="grammar"), 400, "grammar", "invalid_value"),
        (GrammarTooComplex("slow", param="tools"), 400, "tools", "invalid_value"),
        (ConstraintFailed("gave out", param="grammar"), 400, "grammar", "invalid_value"),
        (ContextLengthExceeded("long", param="input"), 400, "input", "context_length_exceeded"),
        (ResponseNotFound("gone", param="response_id"), 404, "response_id", "not_found"),
        (InvalidState("done", param="response_id"), 400, "response_id", None),
        (InvalidRequest("no", param="tools"), 400, "tools", None),
        (ApiError(401, "key", code="invalid_api_key"), 401, None, "invalid_api_key"),
    ],
)
def test_known_errors(exc: Exception, status: int, param: str | None, code: str | None) -> None:
    error = to_api_error(exc)
    assert (error.status, error.param, error.code) == (status, param, code)
    assert error.type == "invalid_request_error"
    body = msgspec.json.decode(msgspec.json.encode(error.body))
    assert body == {
        "error": {"message": error.message, "type": error.type, "param": param, "code": code}
    }


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret path /etc/x"),
        GenerationFailed("llama died at 0xdead"),
        ModelNotFound("/models/x.gguf missing"),
    ],
)
def test_internal_errors_do_not_leak(exc: Exception) -> None:
    error = to_api_error(exc)
    assert error.status == 500 and error.type == "server_error"
    assert str(exc) not in error.message
