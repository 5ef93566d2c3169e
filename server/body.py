"""The request body: its content type and coding checked, then read in chunks up to the limit.

A body is never read whole before its size is known to fit: a ``Content-Length`` past the
limit is refused before any byte is read, and a chunked body is refused as soon as it passes
the limit (uvicorn stops reading from the socket while chunks wait, so nothing beyond one
chunk is buffered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from blacksheep import Request

from .errors import ApiError

#: Media types read as JSON; a missing Content-Type is read as JSON too (curl's ``-d`` sends
#: form encoding, which is refused, but a bare HTTP client may send none).
_JSON_SUFFIX = "+json"


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The body of a JSON request, at most ``max_bytes`` long; raises :class:`ApiError`
    415 for another media type or a content coding, 413 for a larger body."""
    _check_content_type(request)
    declared = request.get_first_header(b"Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    # blacksheep's stub calls stream() a coroutine; it is an async generator.
    chunks: AsyncIterator[bytes] = request.stream()  # type: ignore[assignment]
    body = bytearray()
    async for chunk in chunks:
        if chunk:
            body.extend(chunk)
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
    return bytes(body)


def _check_content_type(request: Request) -> None:
    content_type = request.get_first_header(b"Content-Type")
    if content_type is not None:
        media = content_type.split(b";", 1)[0].strip().decode("latin-1").lower()
        if media != "application/json" and not media.endswith(_JSON_SUFFIX):
            raise ApiError(
                415,
                f"Unsupported Content-Type {media!r}: send the body as application/json.",
                "invalid_request_error",
                None,
                "unsupported_media_type",
            )
    encoding = request.get_first_header(b"Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        raise ApiError(
            415,
            f"Unsupported Content-Encoding {encoding.decode('latin-1')!r}: send the body "
            "uncompressed.",
            "invalid_request_error",
            None,
            "unsupported_content_encoding",
            headers={"Accept-Encoding": "identity"},
        )


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than this server's limit of {max_bytes} bytes.",
        "invalid_request_error",
        None,
        "request_too_large",
    )
