"""The server's log: one line per event, as text or as JSON, each carrying its request's id.

The gateway puts the id of the request being handled in :data:`REQUEST_ID`, a context
variable: every log line written while handling it, including those of the response's run
(its task inherits the context), carries the id. Structured values travel as
``extra=fields(key=value, ...)`` and become JSON members, or ``key=value`` pairs in text.

Prompts and outputs are logged only by :class:`RunLog` with ``log_requests`` (the
``--log-requests`` flag); nothing else in the server logs request content, and API keys are
never logged.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, Literal, TypeAlias

import msgspec

from exloop.orchestrator.items import Message
from exloop.orchestrator.record import ResponseRecord
from exloop.orchestrator.telemetry import NoTelemetry

LogFormat: TypeAlias = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: The id of the request whose handling is running in this context.
REQUEST_ID: ContextVar[str | None] = ContextVar("exloop_request_id", default=None)

_FIELDS = "exloop_fields"
_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_encoder = msgspec.json.Encoder(enc_hook=str)

log = logging.getLogger("exloop.server")


def fields(**values: object) -> dict[str, Any]:
    """``extra=`` for a log call: structured values of the event."""
    return {_FIELDS: values}


class _RequestId(logging.Filter):
    """Stamps each record with the request id of its context (``-`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id] message key=value ...``."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        values: dict[str, object] | None = getattr(record, _FIELDS, None)
        if values:
            line += "".join(
                f" {key}={_encoder.encode(value).decode()}" for key, value in values.items()
            )
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, event, then the event's
    fields (and ``exception`` with the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "event": record.getMessage(),
        }
        values: dict[str, object] | None = getattr(record, _FIELDS, None)
        if values:
            entry.update(values)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger (uvicorn's too) to stderr in ``log_format`` at ``level``."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestId())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn's loggers write through the root handler, not handlers of their own.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # The gateway logs each request; uvicorn's access log would repeat it without the id.
    logging.getLogger("uvicorn.access").disabled = True
    if level != "debug":
        # httpx logs every page fetch and search request at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # the MCP SDK's HTTP client


class RunLog(NoTelemetry):
    """Logs each finished response: id, status, tokens and time; with ``log_requests`` also
    its input and output text (off by default: prompts and answers are the users' data)."""

    def __init__(self, *, log_requests: bool = False) -> None:
        self._log_requests = log_requests

    def run_finished(self, record: ResponseRecord, seconds: float) -> None:
        usage = record.usage
        values: dict[str, object] = {
            "response_id": record.id,
            "status": record.status,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "seconds": round(seconds, 4),
        }
        if self._log_requests:
            values["instructions"] = record.spec.instructions
            values["input"] = [_text(item) for item in record.input_items]
            values["output"] = [_text(item) for item in record.output]
        log.info("response finished", extra=fields(**values))


def _text(item: object) -> object:
    """A message as its role and text; another item as its JSON."""
    if isinstance(item, Message):
        return {"role": item.role, "text": item.text}
    return msgspec.to_builtins(item)
