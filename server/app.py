"""The HTTP application: OpenAI's Responses and Chat Completions endpoints over one
orchestrator.

Handlers read the body within the limits (:mod:`.body`), decode and validate it in a worker
thread (a 400 before anything runs; the event loop stays free for other requests), ask the
orchestrator, and answer with msgspec-encoded JSON or a server-sent event stream. Every
failure, unknown route and wrong method answers with OpenAI's error object (:mod:`.errors`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeAlias, TypeVar

import anyio
import msgspec
from blacksheep import Application, Content, Request, Response
from blacksheep.server.routing import Router

from exloop.engine.errors import InvalidGrammar
from exloop.engine.fingerprint import model_fingerprint
from exloop.orchestrator.events import StreamEvent
from exloop.orchestrator.items import Compaction, Item
from exloop.orchestrator.service import Orchestrator, RunHandle
from exloop.orchestrator.spec import RunSpec

from .body import read_json_body
from .chat_request import parse_chat_request
from .chat_response import ChunkStream, chat_completion
from .compact_request import CompactedResponse, parse_compact_request
from .errors import ApiError, invalid_request, to_api_error
from .limits import Limits
from .pagination import Page, PageQuery, item_id, paginate
from .responses_request import parse_responses_request
from .sse import DONE, encode_data, encode_event
from .steering import steered
from .streaming import check_disconnect_support, event_stream, unless_disconnected

_encoder = msgspec.json.Encoder()

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


@dataclass(frozen=True, slots=True)
class AppSettings:
    """What the HTTP layer needs besides the orchestrator."""

    #: The model name ``/v1/models`` lists and requests without ``model`` report.
    served_model: str
    #: When set, every endpoint but ``/health`` requires ``Authorization: Bearer <key>``.
    api_key: str | None = None
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


def build_app(orchestrator: Orchestrator, settings: AppSettings) -> Application:
    """The application over a running orchestrator (entered by the caller, around serving).

    Raises :class:`RuntimeError` when BlackSheep lacks what disconnect handling relies on.
    """
    check_disconnect_support()
    # An own router: Application() would share the module-level default router between apps.
    app = Application(router=Router())
    api = _Api(orchestrator, settings)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/responses", api.create_response),
        ("POST", "/v1/responses/compact", api.compact),
        ("GET", "/v1/responses/{response_id}", api.get_response),
        ("DELETE", "/v1/responses/{response_id}", api.delete_response),
        ("POST", "/v1/responses/{response_id}/cancel", api.cancel_response),
        ("GET", "/v1/responses/{response_id}/input_items", api.input_items),
        ("POST", "/v1/chat/completions", api.chat_completions),
        ("GET", "/v1/models", api.models),
        ("GET", "/v1/models/{model}", api.model),
        ("GET", "/health", api.health),
    ]
    for method, path, handler in routes:
        app.router.add(method, path, _plain(handler))

    async def no_route(request: Request) -> Response:
        return error_response(_no_route(app.router, request))

    app.router.fallback = no_route
    # The first middleware is the outermost: errors from authentication answer too.
    app.middlewares.append(_answer_errors)
    if settings.api_key is not None:
        app.middlewares.append(partial(_authenticate, settings.api_key.encode()))
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


async def _authenticate(api_key: bytes, request: Request, handler: Handler) -> Response:
    """Bearer authentication on every route but ``/health`` (kept open for probes)."""
    if request.path != "/health":
        header = request.get_first_header(b"Authorization") or b""
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise ApiError(
                401,
                "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                "invalid_request_error",
                None,
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


class _Api:
    """The endpoint handlers over one orchestrator."""

    def __init__(self, orchestrator: Orchestrator, settings: AppSettings) -> None:
        self._orchestrator = orchestrator
        self._settings = settings
        self._card = ModelCard(settings.served_model, int(time.time()))
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

    async def _start(self, spec: RunSpec, constraint_param: str | None) -> RunHandle:
        try:
            return await self._orchestrator.create(spec)
        except InvalidGrammar as exc:
            # The engine names its constraint "grammar"; the client may have sent it as
            # text.format or response_format.
            if exc.param == "grammar" and constraint_param is not None:
                raise invalid_request(exc.message, constraint_param, "invalid_value") from None
            raise

    def _abort(self, response_id: str) -> Callable[[], Awaitable[None]]:
        return lambda: self._orchestrator.abort(response_id)

    # -- /v1/responses --------------------------------------------------------------------

    async def create_response(self, request: Request) -> Response:
        call = await self._parse(
            request, partial(parse_responses_request, served_model=self._settings.served_model)
        )
        spec = steered(call.spec, self._settings.steer_tool)
        handle = await self._start(spec, call.constraint_param)
        if call.stream:
            # A background response outlives its stream; any other is aborted with it.
            on_disconnect = None if call.spec.background else self._abort(handle.id)
            return event_stream(
                request, _response_events(handle.events()), on_disconnect=on_disconnect
            )
        if call.spec.background:
            return json_response(handle.response)
        final = await unless_disconnected(request, handle.wait, self._abort(handle.id))
        return json_response(final)

    async def compact(self, request: Request) -> Response:
        spec = await self._parse(
            request, partial(parse_compact_request, served_model=self._settings.served_model)
        )
        run = await self._orchestrator.compact(spec)
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
        response_id = _response_id(request)
        stream = _query(request, "stream")
        if stream is None or stream.lower() == "false":
            return json_response(await self._orchestrator.retrieve(response_id))
        if stream.lower() != "true":
            raise invalid_request(f"stream must be true or false, got {stream!r}.", "stream")
        starting_after = _int_query(request, "starting_after")
        events = await self._orchestrator.subscribe(response_id, starting_after=starting_after)
        return event_stream(request, _response_events(events))

    async def delete_response(self, request: Request) -> Response:
        response_id = _response_id(request)
        await self._orchestrator.delete(response_id)
        return json_response(DeletedResponse(response_id))

    async def cancel_response(self, request: Request) -> Response:
        return json_response(await self._orchestrator.cancel(_response_id(request)))

    async def input_items(self, request: Request) -> Response:
        query = PageQuery.from_query(request.query)
        items = await self._orchestrator.input_items(_response_id(request))
        page: Page[Item] = paginate(items, item_id, query)
        return json_response(page)

    # -- /v1/chat/completions -------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        call = await self._parse(request, parse_chat_request)
        handle = await self._start(call.spec, call.constraint_param)
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
            return event_stream(
                request, _chat_events(handle.events(), chunks), on_disconnect=self._abort(handle.id)
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


def _plain(handler: Handler) -> Handler:
    """A plain function for ``handler`` (BlackSheep marks its handlers with an attribute, which
    a bound method cannot take)."""

    async def route(request: Request) -> Response:
        return await handler(request)

    return route


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
