"""Errors the orchestrator raises for requests it cannot honour. The server maps them (and the
engine's) to OpenAI's error object in one place.

    OrchestratorError
    ├── ResponseNotFound   an unknown or deleted response id (404)
    ├── InvalidRequest     a request that cannot run as asked (400)
    ├── InvalidState       a state change the response's state forbids (400)
    └── StoreError         the response store failed, or holds what this exloop cannot read
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every orchestrator error; ``param`` names the request field at fault."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ResponseNotFound(OrchestratorError):
    """No stored response has that id."""


class InvalidRequest(OrchestratorError):
    """The request is well-formed but cannot run as asked."""


class InvalidState(OrchestratorError):
    """The response is in a state that forbids the requested change (e.g. cancelling a
    finished response); OpenAI answers these with 400."""


class StoreError(OrchestratorError):
    """The response store cannot be reached or read (the server's fault, not the request's)."""
