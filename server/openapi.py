"""The OpenAPI 3.1 document of the server (``/openapi.json``) and its ``/docs`` page.

The document is built from the route table the application serves (:class:`Operation`, one
per route) and from the msgspec types the handlers decode request bodies into and encode
answers from, through ``msgspec.json.schema_components``: there is no hand-kept copy of any
schema to drift from the code.

One refinement: ``POST /v1/responses`` decodes ``input`` as a string or a list of raw JSON
values, because real clients send items loosely (messages without ``type``, content as a
string) and each entry is normalized before it is converted into an item type. The document
shows the item types the entries become, which is what a client should send.

``/docs`` is a self-contained page rendered on the server from the same document (the
machine this runs on may have no internet, so no script or style comes from a CDN): every
operation with its parameters and body and answer types, linked to the schemas, which are
shown as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from html import escape
from typing import Any

import msgspec

from exloop.orchestrator.items import Item

from .errors import ErrorEnvelope

JSON = "application/json"
SSE = "text/event-stream"
_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: how it is called and what it answers."""

    method: str
    path: str
    summary: str
    #: The type the JSON request body decodes into (None: no body).
    body: Any = None
    #: The type of the JSON answer (None: ``media`` says what comes back).
    answer: Any = None
    #: The type of each server-sent event, when the operation can stream.
    events: Any = None
    query: tuple[QueryParam, ...] = ()
    #: The answer's media type when it is not JSON (metrics text, the docs page).
    media: str = JSON
    #: Served without the API key.
    public: bool = False

    @property
    def operation_id(self) -> str:
        words = re.findall(r"[a-z0-9]+", f"{self.method} {self.path}".lower())
        return "_".join(words)


def openapi_document(
    operations: list[Operation], *, title: str, version: str, secured: bool
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations``; ``secured`` marks the non-public ones
    as needing the bearer key."""
    types: list[Any] = [ErrorEnvelope, list[Item]]
    for operation in operations:
        types += [t for t in (operation.body, operation.answer, operation.events) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(map(_type_key, types), schemas, strict=True))
    error, items = refs[_type_key(ErrorEnvelope)], refs[_type_key(list[Item])]
    request = components.get("ResponsesRequest")
    if request is not None:
        request["properties"]["input"] = {"anyOf": [{"type": "string"}, items, {"type": "null"}]}

    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        entry: dict[str, Any] = {
            "operationId": operation.operation_id,
            "summary": operation.summary,
            "parameters": _parameters(operation),
            "responses": {
                "200": _answer(operation, refs),
                "default": {
                    "description": "An error, in OpenAI's shape.",
                    "content": {JSON: {"schema": error}},
                },
            },
        }
        if operation.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": refs[_type_key(operation.body)]}},
            }
        if operation.public:
            entry["security"] = []
        paths.setdefault(operation.path, {})[operation.method.lower()] = entry

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"apiKey": []}]
    return _renamed(document)


def _type_key(value: Any) -> str:
    return repr(value)


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(operation.path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": q.schema,
        }
        for q in operation.query
    ]
    return params


def _answer(operation: Operation, refs: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if operation.answer is not None:
        content[JSON] = {"schema": refs[_type_key(operation.answer)]}
    elif operation.media != JSON:
        content[operation.media] = {"schema": {"type": "string"}}
    if operation.events is not None:
        # Each event's data is one of these; the stream ends with `data: [DONE]`.
        content[SSE] = {"schema": refs[_type_key(operation.events)]}
    return {"description": operation.summary, "content": content}


def _renamed(document: dict[str, Any]) -> dict[str, Any]:
    """Readable names for generic types msgspec names after their parameters
    (``Page_exloop.orchestrator.items.Message___...`` becomes ``ItemPage``)."""
    text = json.dumps(document)
    for name in list(document["components"]["schemas"]):
        if name.startswith("Page_"):
            text = text.replace(f'"{name}"', '"ItemPage"').replace(f'/{name}"', '/ItemPage"')
    renamed: dict[str, Any] = json.loads(text)
    return renamed


# -- /docs ---------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f6f6f6;padding:.8rem;overflow:auto}
.op{border-top:1px solid #ddd;padding:.6rem 0}.m{display:inline-block;width:4.5rem;font-weight:bold}
.get{color:#06c}.post{color:#080}.delete{color:#b00}a{color:#06c}
"""


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained HTML page describing ``document``."""
    info = document["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} API <small>{escape(info['version'])}</small></h1>",
        '<p>The machine-readable document is <a href="/openapi.json">/openapi.json</a> '
        "(OpenAPI 3.1). Authenticate with <code>Authorization: Bearer KEY</code> when the server "
        "has API keys.</p><h2>Operations</h2>",
    ]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            parts.append(_docs_operation(path, method, op))
    parts.append("<h2>Schemas</h2>")
    for name, schema in document["components"]["schemas"].items():
        body = escape(json.dumps(schema, indent=2))
        parts.append(
            f'<details id="{escape(name)}"><summary><code>{escape(name)}</code></summary>'
            f"<pre>{body}</pre></details>"
        )
    parts.append("</body></html>")
    return "".join(parts)


def _docs_operation(path: str, method: str, op: dict[str, Any]) -> str:
    lines = [
        f'<div class=op id="{escape(op["operationId"])}"><span class="m {method}">'
        f"{method.upper()}</span><code>{escape(path)}</code> {escape(op['summary'])}<ul>"
    ]
    for param in op["parameters"]:
        lines.append(
            f"<li>{param['in']} <code>{escape(param['name'])}</code> "
            f"{escape(param.get('description', ''))}</li>"
        )
    if "requestBody" in op:
        schema = op["requestBody"]["content"][JSON]["schema"]
        lines.append(f"<li>body: {_schema_link(schema)}</li>")
    for media, content in op["responses"]["200"]["content"].items():
        lines.append(
            f"<li>200 <code>{escape(media)}</code>: {_schema_link(content['schema'])}</li>"
        )
    lines.append("</ul></div>")
    return "".join(lines)


def _schema_link(schema: dict[str, Any]) -> str:
    refs = re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema))
    if not refs:
        return f"<code>{escape(json.dumps(schema))}</code>"
    if len(refs) > 6:
        return f"one of {len(refs)} types (see the document)"
    return " | ".join(f'<a href="#{escape(name)}"><code>{escape(name)}</code></a>' for name in refs)
