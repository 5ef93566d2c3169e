"""Errors the engine raises. The server maps each to an HTTP status in one place.

EngineError
├── InvalidParameter      a sampling value out of range (names the field)
├── InvalidGrammar        a grammar or schema that does not compile
│   └── GrammarTooComplex one that passed the compile budget (time or memory)
├── ConstraintFailed      a grammar that gave out while generating (the client's grammar)
├── ContextLengthExceeded the prompt does not fit the model's context window
├── ModelNotFound         the model file is missing (names the path and the fix)
├── UnsupportedBuild      the backend's native library uses instructions this CPU lacks
└── GenerationFailed      the backend failed while generating
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every engine error."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The request field at fault, named as the API names it (e.g. ``top_p``).
        self.param = param


class InvalidParameter(EngineError):
    """A sampling setting is out of range or of the wrong kind."""


class InvalidGrammar(EngineError):
    """A constraint (grammar, regex, JSON schema) failed to compile."""


class GrammarTooComplex(InvalidGrammar):
    """A constraint passed the compile budget: its deadline or its memory cap."""


class ConstraintFailed(EngineError):
    """A compiled constraint failed during generation: llguidance's limits or a grammar with
    no finite output. The grammar is the client's, so this is the request's fault."""


class ContextLengthExceeded(EngineError):
    """The prompt plus the requested output does not fit the context window."""


class ModelNotFound(EngineError):
    """The model file cannot be found or opened."""


class UnsupportedBuild(EngineError):
    """The backend's native library was built for instructions this machine cannot run."""


class GenerationFailed(EngineError):
    """The backend raised while generating; only the affected job fails."""
