"""The HTTP application: OpenAI's Responses and Chat Completions endpoints over one
orchestrator.

Handlers read the body within the limits (:mod:`.body`), decode and validate it in a worker
thread (a 400 before anything runs; the event loop stays free for other requests), ask the
orchestrator, and answer with msgspec-encoded JSON or a server-sent event stream. Every
failure, unknown route and wrong method answers with OpenAI's error object (:mod:`.errors`).
The routes are one table of :class:`~.openapi.Operation`\\ s, which ``/openapi.json``
describes. Every route but the public ones (``/health``, ``/docs``, ``/openapi.json``, and
``/metrics`` when opened) needs an API key when the server has keys; the key's id owns the
responses created with it, and every handler passes it to the orchestrator, which hides other
owners' responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeAlias, TypeVar, cast

import anyio
import msgspec
from blacksheep import Application, Content, Request, Response
from blacksheep.server.routing import Router

from exloop.engine.errors import InvalidGrammar
from exloop.engine.fingerprint import model_fingerprint
from exloop.orchestrator.errors import StoreError
from exloop.orchestrator.events import StreamEvent
from exloop.orchestrator.items import Compaction, Item
from exloop.orchestrator.resource import Response as ResponseObject
from exloop.orchestrator.service import Orchestrator, RunHandle
from exloop.orchestrator.spec import RunSpec

from .api_keys import ApiKeys
from .body import read_json_body
from .chat_request import ChatRequest, parse_chat_request
from .chat_response import ChatCompletion, ChatCompletionChunk, ChunkStream, chat_completion
from .compact_request import CompactedResponse, CompactRequest, parse_compact_request
from .errors import ApiError, invalid_request, to_api_error
from .gateway import ENDPOINT
from .limits import Limits
from .metrics import CONTENT_TYPE, Metrics
from .openapi import Operation, QueryParam, docs_page, openapi_document
from .pagination import Page, PageQuery, item_id, paginate
from .responses_request import ResponsesCall, ResponsesRequest, parse_responses_request
from .sse import DONE, encode_data, encode_event
from .steering import steered
from .streaming import check_disconnect_support, event_stream, unless_disconnected

_encoder = msgspec.json.Encoder()
log = logging.getLogger("exloop.server")

Handler: TypeAlias = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")

#: Requests decoded and validated at once (each in a worker thread): few, so that the event
#: loop keeps its share of the GIL while large bodies are read.
_PARSERS = 2


class DeletedResponse(msgspec.Struct, frozen=True):
    id: str
    object: str = "response"
    deleted: bool = True


class ModelCard(msgspec.Struct, frozen=True):
    id: str
    created: int
    owned_by: str = "exloop"
    object: str = "model"


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelCard]
    object: str = "list"


class Health(msgspec.Struct, frozen=True):
    status: str
    model: str


class InputTokens(msgspec.Struct, frozen=True):
    input_tokens: int
    object: str = "response.input_tokens"


@dataclass(frozen=True, slots=True)
class AppSettings:
    """What the HTTP layer needs besides the orchestrator."""

    #: The model name ``/v1/models`` lists and requests without ``model`` report.
    served_model: str
    #: When any, every route but the public ones requires ``Authorization: Bearer <key>``.
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    #: ``/metrics``; None serves no metrics.
    metrics: Metrics | None = None
    #: Serve ``/metrics`` without the API key.
    metrics_public: bool = False
    #: Seconds of silence after which a stream sends an SSE comment (None: never).
    sse_keepalive: float | None = 15.0
    #: What one request may make the server do.
    limits: Limits = field(default_factory=Limits)
    #: Chat Completions' ``system_fingerprint``; by default one from the engine's model name,
    #: backend and versions (``exloop serve`` passes one made from the model's files too).
    system_fingerprint: str | None = None
    #: Test-only: steer agent turns to call this function (see :mod:`.steering`).
    steer_tool: str | None = None


def json_response(payload: object, status: int = 200) -> Response:
    return Response(status, None, Content(b"application/json", _encoder.encode(payload)))


def error_response(error: ApiError) -> Response:
    response = json_response(error.body, error.status)
    for name, value in error.headers.items():
        response.add_header(name.encode(), value.encode())
    return response


_PAGE = (
    QueryParam("limit", "Items per page (1-100, default 20).", {"type": "integer"}),
    QueryParam("order", "asc or desc (default desc).", {"enum": ["asc", "desc"]}),
    QueryParam("after", "List items after this item id.", {"type": "string"}),
    QueryParam("before", "List items before this item id.", {"type": "string"}),
)
_RESUME = (
    QueryParam(
        "stream",
        "true: replay the response's events, then follow them live.",
        {"enum": ["true", "false"]},
    ),
    QueryParam(
        "starting_after", "With stream: replay after this sequence number.", {"type": "integer"}
    ),
)


def operations(settings: AppSettings) -> list[tuple[Operation, str]]:
    """The route table: each operation and the name of its handler."""
    op = Operation
    responses, response = "/v1/responses", "/v1/responses/{response_id}"
    table = [
        (
            op(
                "POST",
                responses,
                "Create a response.",
                ResponsesRequest,
                ResponseObject,
                StreamEvent,
            ),
            "create_response",
        ),
        (
            op(
                "POST",
                f"{responses}/compact",
                "Compact a conversation into its user messages and one compaction item.",
                CompactRequest,
                CompactedResponse,
            ),
            "compact",
        ),
        (
            op(
                "POST",
                f"{responses}/input_tokens",
                "Count the input tokens a create request would use.",
                ResponsesRequest,
                InputTokens,
            ),
            "input_tokens",
        ),
        (
            op(
                "GET",
                response,
                "Retrieve a response, or replay and follow its events.",
                answer=ResponseObject,
                events=StreamEvent,
                query=_RESUME,
            ),
            "get_response",
        ),
        (
            op(
                "DELETE",
                response,
                "Delete a response (cancelling it first if it runs).",
                answer=DeletedResponse,
            ),
            "delete_response",
        ),
        (
            op(
                "POST", f"{response}/cancel", "Cancel a background response.", answer=ResponseObject
            ),
            "cancel_response",
        ),
        (
            op(
                "GET",
                f"{response}/input_items",
                "List a response's input items.",
                answer=Page[Item],
                query=_PAGE,
            ),
            "input_items",
        ),
        (
            op(
                "POST",
                "/v1/chat/completions",
                "Create a chat completion.",
                ChatRequest,
                ChatCompletion,
                ChatCompletionChunk,
            ),
            "chat_completions",
        ),
        (op("GET", "/v1/models", "List the served model.", answer=ModelList), "models"),
        (op("GET", "/v1/models/{model}", "Describe the served model.", answer=ModelCard), "model"),
        (
            op(
                "GET",
                "/health",
                "200 when the model is loaded (503 while it loads).",
                answer=Health,
                public=True,
            ),
            "health",
        ),
        (
            op(
                "GET",
                "/openapi.json",
                "This API's OpenAPI 3.1 document.",
                media="application/json",
                public=True,
            ),
            "openapi",
        ),
        (
            op("GET", "/docs", "This API's documentation page.", media="text/html", public=True),
            "docs",
        ),
    ]
    if settings.metrics is not None:
        metrics = op(
            "GET",
            "/metrics",
            "Prometheus metrics.",
            media="text/plain",
            public=settings.metrics_public,
        )
        table.append((metrics, "metrics"))
    return table


def build_app(orchestrator: Orchestrator, settings: AppSettings) -> Application:
    """The application over a running orchestrator (entered by the caller, around serving).

    Raises :class:`RuntimeError` when BlackSheep lacks what disconnect handling relies on.
    """
    check_disconnect_support()
    # An own router: Application() would share the module-level default router between apps.
    app = Application(router=Router())
    table = operations(settings)
    api = _Api(orchestrator, settings, [operation for operation, _ in table])
    for operation, name in table:
        handler = getattr(api, name)
        keys = None if operation.public or not settings.api_keys else settings.api_keys
        app.router.add(operation.method, operation.path, _route(operation.path, handler, keys))

    async def no_route(request: Request) -> Response:
        return error_response(_no_route(app.router, request))

    app.router.fallback = no_route
    app.middlewares.append(_answer_errors)
    return app


def _no_route(router: Router, request: Request) -> ApiError:
    """404 for a path nothing serves, 405 (naming the methods) for one served otherwise."""
    allowed = sorted(
        method.decode()
        for method, candidates in router.routes.items()
        if any(route.match(request) for route in candidates)
    )
    if not allowed:
        return ApiError(
            404,
            f"Unknown route: {request.method} {request.path}.",
            "invalid_request_error",
            None,
            "unknown_url",
        )
    return ApiError(
        405,
        f"Method {request.method} is not allowed on {request.path}; use {', '.join(allowed)}.",
        "invalid_request_error",
        None,
        "method_not_allowed",
        headers={"Allow": ", ".join(allowed)},
    )


async def _answer_errors(request: Request, handler: Handler) -> Response:
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 (the one place errors become answers)
        return error_response(to_api_error(exc))


def _owner(keys: ApiKeys, request: Request) -> str:
    """The id of the bearer key ``request`` carries; 401 without a valid one."""
    header = request.get_first_header(b"Authorization") or b""
    scheme, _, token = header.partition(b" ")
    owner = keys.identify(token.strip()) if scheme.lower() == b"bearer" else None
    if owner is None:
        raise ApiError(
            401,
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error",
            None,
            "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner


#: Where a request's owner (its key's id) is kept for the handler, in the ASGI scope.
_OWNER = "exloop.owner"


class _Api:
    """The endpoint handlers over one orchestrator."""

    def __init__(
        self, orchestrator: Orchestrator, settings: AppSettings, table: list[Operation]
    ) -> None:
        self._orchestrator = orchestrator
        self._settings = settings
        self._card = ModelCard(settings.served_model, int(time.time()))
        self._table = table
        self._openapi: bytes | None = None
        self._docs: bytes | None = None
        self._parsers: anyio.CapacityLimiter | None = None
        info = orchestrator.model_info
        self._fingerprint = settings.system_fingerprint or model_fingerprint(
            info.backend, info.name
        )

    async def _parse(self, request: Request, parse: Callable[..., T]) -> T:
        """Read the body within the limits and run ``parse`` on it in a worker thread."""
        body = await read_json_body(request, self._settings.limits.max_body_bytes)
        if self._parsers is None:
            self._parsers = anyio.CapacityLimiter(_PARSERS)
        return await anyio.to_thread.run_sync(
            partial(parse, body, limits=self._settings.limits),
            limiter=self._parsers,
        )

    async def models(self, request: Request) -> Response:
        return json_response(ModelList([self._card]))

    async def model(self, request: Request) -> Response:
        name = str(request.route_values["model"])
        if name != self._card.id:
            raise ApiError(
                404,
                f"The model '{name}' does not exist; this server serves '{self._card.id}'.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        return json_response(self._card)

    async def health(self, request: Request) -> Response:
        return json_response(Health("ok", self._settings.served_model))

    async def metrics(self, request: Request) -> Response:
        assert self._settings.metrics is not None  # the route exists only with metrics
        try:
            await self._orchestrator.count_stored()
        except StoreError as exc:
            log.warning("counting stored responses failed (the last count stands): %s", exc)
        return Response(200, None, Content(CONTENT_TYPE, self._settings.metrics.exposition()))

    def _document(self) -> bytes:
        if self._openapi is None:
            document = openapi_document(
                self._table,
                title="exloop",
                version=_version(),
                secured=bool(self._settings.api_keys),
            )
            self._openapi = _encoder.encode(document)
            self._docs = docs_page(document).encode()
        return self._openapi

    async def openapi(self, request: Request) -> Response:
        return Response(200, None, Content(b"application/json", self._document()))

    async def docs(self, request: Request) -> Response:
        self._document()
        assert self._docs is not None
        return Response(200, None, Content(b"text/html; charset=utf-8", self._docs))

    async def _start(
        self, request: Request, spec: RunSpec, constraint_param: str | None
    ) -> RunHandle:
        try:
            return await self._orchestrator.create(spec, owner=_owner_of(request))
        except InvalidGrammar as exc:
            # The engine names its constraint "grammar"; the client may have sent it as
            # text.format or response_format.
            if exc.param == "grammar" and constraint_param is not None:
                raise invalid_request(exc.message, constraint_param, "invalid_value") from None
            raise

    def _abort(self, response_id: str) -> Callable[[], Awaitable[None]]:
        return lambda: self._orchestrator.abort(response_id)

    # -- /v1/responses --------------------------------------------------------------------

    def _stream(
        self,
        request: Request,
        chunks: AsyncGenerator[bytes, None],
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        return event_stream(
            request, chunks, on_disconnect=on_disconnect, keepalive=self._settings.sse_keepalive
        )

    async def _parse_responses(self, request: Request) -> ResponsesCall:
        parse = partial(parse_responses_request, served_model=self._settings.served_model)
        return await self._parse(request, parse)

    async def create_response(self, request: Request) -> Response:
        call = await self._parse_responses(request)
        spec = steered(call.spec, self._settings.steer_tool)
        handle = await self._start(request, spec, call.constraint_param)
        if call.stream:
            # A background response outlives its stream; any other is aborted with it.
            on_disconnect = None if call.spec.background else self._abort(handle.id)
            return self._stream(request, _response_events(handle.events()), on_disconnect)
        if call.spec.background:
            return json_response(handle.response)
        final = await unless_disconnected(request, handle.wait, self._abort(handle.id))
        return json_response(final)

    async def input_tokens(self, request: Request) -> Response:
        call = await self._parse_responses(request)
        count = await self._orchestrator.count_input_tokens(call.spec, owner=_owner_of(request))
        return json_response(InputTokens(count))

    async def compact(self, request: Request) -> Response:
        spec = await self._parse(
            request, partial(parse_compact_request, served_model=self._settings.served_model)
        )
        run = await self._orchestrator.compact(spec, owner=_owner_of(request))
        handle = run.handle
        final = await unless_disconnected(request, handle.wait, self._abort(handle.id))
        if final.status != "completed":
            message = final.error.message if final.error else f"The compaction {final.status}."
            raise ApiError(500, message, "server_error")
        compacted = [item for item in final.output if isinstance(item, Compaction)]
        return json_response(
            CompactedResponse(
                id=final.id,
                created_at=final.created_at,
                output=[*run.kept, *compacted],
                usage=final.usage,
            )
        )

    async def get_response(self, request: Request) -> Response:
        response_id, owner = _response_id(request), _owner_of(request)
        stream = _query(request, "stream")
        if stream is None or stream.lower() == "false":
            return json_response(await self._orchestrator.retrieve(response_id, owner=owner))
        if stream.lower() != "true":
            raise invalid_request(f"stream must be true or false, got {stream!r}.", "stream")
        starting_after = _int_query(request, "starting_after")
        events = await self._orchestrator.subscribe(
            response_id, starting_after=starting_after, owner=owner
        )
        return self._stream(request, _response_events(events))

    async def delete_response(self, request: Request) -> Response:
        response_id = _response_id(request)
        await self._orchestrator.delete(response_id, owner=_owner_of(request))
        return json_response(DeletedResponse(response_id))

    async def cancel_response(self, request: Request) -> Response:
        response = await self._orchestrator.cancel(_response_id(request), owner=_owner_of(request))
        return json_response(response)

    async def input_items(self, request: Request) -> Response:
        query = PageQuery.from_query(request.query)
        items = await self._orchestrator.input_items(
            _response_id(request), owner=_owner_of(request)
        )
        page: Page[Item] = paginate(items, item_id, query)
        return json_response(page)

    # -- /v1/chat/completions -------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        call = await self._parse(request, parse_chat_request)
        handle = await self._start(request, call.spec, call.constraint_param)
        if call.stream:
            snapshot = handle.response
            chunks = ChunkStream(
                handle.id,
                snapshot.created_at,
                snapshot.model,
                logprobs=call.logprobs,
                include_usage=call.include_usage,
                fingerprint=self._fingerprint,
            )
            return self._stream(
                request, _chat_events(handle.events(), chunks), self._abort(handle.id)
            )
        final = await unless_disconnected(request, handle.wait, self._abort(handle.id))
        if final.status == "failed":
            message = final.error.message if final.error else "The response failed."
            if final.error is not None and final.error.code == "invalid_prompt":
                # The request's own grammar gave out while generating.
                raise invalid_request(message, call.constraint_param or "tools", "invalid_value")
            raise ApiError(500, message, "server_error")
        return json_response(
            chat_completion(final, logprobs=call.logprobs, fingerprint=self._fingerprint)
        )


def _route(pattern: str, handler: Handler, keys: ApiKeys | None) -> Handler:
    """``handler`` as a route of ``pattern``: it names its endpoint for the metrics and, with
    ``keys``, refuses a request without a valid key and records the key's id as the owner.
    (A plain function: BlackSheep marks its handlers with an attribute, which a bound method
    cannot take.)"""

    async def route(request: Request) -> Response:
        scope = _scope(request)
        scope[ENDPOINT] = pattern
        if keys is not None:
            scope[_OWNER] = _owner(keys, request)
        return await handler(request)

    return route


def _scope(request: Request) -> dict[str, Any]:
    """The request's ASGI scope, where the route leaves what the gateway and handlers read."""
    return cast(dict[str, Any], request.scope)


def _owner_of(request: Request) -> str | None:
    owner: str | None = _scope(request).get(_OWNER)
    return owner


def _version() -> str:
    try:
        return version("exloop")
    except PackageNotFoundError:
        return "0"


async def _response_events(events: AsyncIterator[StreamEvent]) -> AsyncGenerator[bytes, None]:
    async for event in events:
        yield encode_event(event)
    yield DONE


async def _chat_events(
    events: AsyncIterator[StreamEvent], chunks: ChunkStream
) -> AsyncGenerator[bytes, None]:
    async for event in events:
        for chunk in chunks.chunks(event):
            yield encode_data(chunk)
    yield DONE


def _response_id(request: Request) -> str:
    return str(request.route_values["response_id"])


def _query(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[-1] if values else None


def _int_query(request: Request, name: str) -> int | None:
    raw = _query(request, name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise invalid_request(f"{name} must be an integer, got {raw!r}.", name) from None
