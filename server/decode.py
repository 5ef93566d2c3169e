"""Typed JSON decoding whose errors name the request field at fault.

msgspec reports a type error as ``Expected `float`, got `str` - at `$.tools[0].strict```; the
client should read ``param: "tools[0].strict"`` instead of a JSON path.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .errors import ApiError, invalid_request

T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def field_path(json_path: str, prefix: str | None = None) -> str | None:
    """``$.a[0].b`` (given without ``$``) as ``a[0].b``, under ``prefix`` when given."""
    # msgspec writes a mapping's value as `[...]`: name the mapping itself.
    path = json_path.partition("[...]")[0].removeprefix(".")
    if prefix:
        return f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
    return path or None


def validation_error(exc: msgspec.ValidationError, prefix: str | None = None) -> ApiError:
    """A 400 naming the field msgspec found at fault, its message without the JSON path."""
    text = str(exc)
    path = ""
    if (at := _AT_PATH.search(text)) is not None:
        path = at["path"]
        text = text[: at.start()]
    if (missing := _MISSING.match(text)) is not None:
        # The missing field is the one at fault, not the object that lacks it.
        path = f"{path}.{missing['field']}"
        code = "missing_required_parameter"
    else:
        code = "invalid_type" if text.startswith("Expected") else "invalid_value"
    return invalid_request(text.rstrip(".") + ".", field_path(path, prefix), code)


def decode_json(body: bytes, type: type[T]) -> T:
    """Decode a request body into ``type``; malformed JSON and wrong types give a 400."""
    if not body.strip():
        raise invalid_request("The request body is empty; a JSON object is required.")
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise malformed_json(exc) from None


def malformed_json(exc: Exception) -> ApiError:
    return invalid_request(
        f"We could not parse the JSON body of your request ({exc}). The body must be a valid "
        "JSON object.",
        code="invalid_json",
    )


def convert(value: Any, type: type[T], prefix: str) -> T:
    """Convert an already decoded JSON value (say, one input item) into ``type``; a type
    error names the field under ``prefix``."""
    try:
        return msgspec.convert(value, type=type)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, prefix) from None
