"""HTTP errors in OpenAI's shape, and the one place exceptions become them.

Every error the server answers with is ``{"error": {"message", "type", "param", "code"}}``
with a fitting status; nothing leaks a traceback or answers in text/plain.

    ApiError                     raised by the server itself (request validation, auth, routes)
    exloop.engine.errors.*       InvalidParameter / InvalidGrammar (too complex too) /
                                 ConstraintFailed → 400, ContextLengthExceeded → 400
                                 context_length_exceeded, anything else → 500
    exloop.orchestrator.errors.* ResponseNotFound → 404, InvalidRequest → 400,
                                 InvalidState → 400 (as OpenAI answers a finished cancel),
                                 StoreError → 503 store_unavailable
    anything else                → 500 server_error, logged, message kept generic
"""

from __future__ import annotations

import logging
from typing import Literal, TypeAlias

import msgspec

from exloop.engine.errors import (
    ConstraintFailed,
    ContextLengthExceeded,
    EngineError,
    InvalidGrammar,
    InvalidParameter,
)
from exloop.orchestrator.errors import (
    InvalidRequest,
    InvalidState,
    ResponseNotFound,
    StoreError,
)

log = logging.getLogger("exloop.server")

ErrorType: TypeAlias = Literal[
    "invalid_request_error", "authentication_error", "not_found_error", "server_error"
]


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody


class ApiError(Exception):
    """An error the server answers with as it is: status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        #: Extra response headers (``Allow`` on a 405, ``WWW-Authenticate`` on a 401).
        self.headers = headers or {}

    @property
    def body(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code))


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error`` naming the request field at fault."""
    return ApiError(400, message, "invalid_request_error", param, code)


#: Characters of a client's text an error message quotes at most.
EXCERPT_CHARS = 40


def excerpt(text: str) -> str:
    """``text`` quoted for an error message, cut to :data:`EXCERPT_CHARS` characters: the
    ``param`` names the field, so a message needs only enough to recognise the value, and an
    answer (and a log line) never echoes the megabytes a client sent."""
    if len(text) <= EXCERPT_CHARS:
        return repr(text)
    return f"{text[:EXCERPT_CHARS]!r}… ({len(text)} characters)"


def to_api_error(exc: BaseException) -> ApiError:
    """The error answer for any exception a handler raised (the only such mapping)."""
    match exc:
        case ApiError():
            return exc
        case InvalidParameter() | InvalidGrammar() | ConstraintFailed():
            return invalid_request(exc.message, exc.param, "invalid_value")
        case ContextLengthExceeded():
            return invalid_request(exc.message, exc.param, "context_length_exceeded")
        case ResponseNotFound():
            return ApiError(404, exc.message, "invalid_request_error", exc.param, "not_found")
        case InvalidState():
            return ApiError(
                400,
                exc.message,
                "invalid_request_error",
                exc.param,
                exc.code,
            )
        case InvalidRequest():
            return invalid_request(exc.message, exc.param, exc.code)
        case StoreError():
            log.error("response store error: %s", exc.message)
            return ApiError(
                503,
                "The response store is unavailable; try again shortly.",
                "server_error",
                None,
                "store_unavailable",
            )
        case EngineError():
            # ModelNotFound and GenerationFailed: the server's fault, not the request's.
            log.error("engine error: %s", exc.message)
            return ApiError(500, "The model failed to handle the request.", "server_error")
        case _:
            log.error("unhandled error", exc_info=exc)
            return ApiError(
                500, "The server had an error while processing the request.", "server_error"
            )
