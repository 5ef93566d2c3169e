"""Typed JSON decoding whose errors name the request field at fault.

msgspec reports a type error as ``Expected `float`, got `str` - at `$.tools[0].strict```; the
client should read ``param: "tools[0].strict"`` instead of a JSON path. A body nested deeper
than the limit is refused before it is decoded, so no recursive code (msgspec's, jsonschema's,
ours) ever sees it.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
import numpy as np

from .errors import ApiError, excerpt, invalid_request

T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
#: msgspec quotes a value outside a ``Literal`` (or a union's tags) whole, however long the
#: client made it.
_ENUM_VALUE = re.compile(r"^Invalid (?P<what>enum value|value) '(?P<value>.*)'$", re.DOTALL)


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
    if (enum := _ENUM_VALUE.match(text)) is not None:
        text = f"Invalid {enum['what']} {excerpt(enum['value'])}"
    if (missing := _MISSING.match(text)) is not None:
        # The missing field is the one at fault, not the object that lacks it.
        path = f"{path}.{missing['field']}"
        code = "missing_required_parameter"
    else:
        code = "invalid_type" if text.startswith("Expected") else "invalid_value"
    return invalid_request(text.rstrip(".") + ".", field_path(path, prefix), code)


def decode_json(body: bytes, type: type[T], *, max_depth: int) -> T:
    """Decode a request body into ``type``; malformed JSON, nesting deeper than ``max_depth``
    and wrong types give a 400."""
    if not body.strip():
        raise invalid_request("The request body is empty; a JSON object is required.")
    depth = json_depth(body, stop_above=max_depth)
    if depth > max_depth:
        raise invalid_request(
            f"The request body nests arrays and objects {depth} levels deep or more; this "
            f"server accepts at most {max_depth}.",
            code="invalid_json",
        )
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise malformed_json(exc) from None


#: A JSON string literal (escapes included), in the unrolled form that never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CHUNK = 1 << 20


def json_depth(body: bytes, *, stop_above: int) -> int:
    """How deeply ``body`` nests arrays and objects (exact for valid JSON; for invalid JSON
    only a guess, which the decoder's error then makes moot). Counting stops past
    ``stop_above``."""
    if body.count(b"[") + body.count(b"{") <= stop_above:
        return 0  # too few brackets to nest deeper (the common case, and the cheap one)
    structure = _STRING.sub(b"", body)
    depth = deepest = 0
    for start in range(0, len(structure), _CHUNK):
        chunk = np.frombuffer(structure, np.uint8, min(_CHUNK, len(structure) - start), start)
        steps = (
            (chunk == ord("[")).view(np.int8)
            + (chunk == ord("{")).view(np.int8)
            - (chunk == ord("]")).view(np.int8)
            - (chunk == ord("}")).view(np.int8)
        )
        levels = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        if deepest > stop_above:
            break
    return deepest


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
