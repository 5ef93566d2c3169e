"""What a request's JSON schemas may hold, checked before anything recursive reads them.

Schemas come as ``text.format`` / ``response_format``, ``grammar`` and tool ``parameters``;
jsonschema's meta-check and llguidance's compiler both recurse and both scale with the
schema, so each schema is first walked here, iteratively, against the :class:`~.limits.Limits`:
its nesting depth, the JSON values of all of a request's schemas together, the size of each
``enum``, and the repetition bounds of each ``pattern``. A schema whose local ``$ref``\\ s
make every value infinite (a required property that refers back to its own object) is
refused too: llguidance would accept it and then generate ``{"a":{"a":...`` without end.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from .errors import invalid_request
from .limits import Limits

#: ``{n}``, ``{n,}`` or ``{n,m}`` not preceded by a backslash.
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")
#: Keywords whose value is one subschema, a list of them, or a mapping of names to them.
_ONE = (
    *("additionalProperties", "items", "not", "if", "then", "else", "contains"),
    *("propertyNames", "unevaluatedProperties", "unevaluatedItems", "additionalItems"),
)
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})


class SchemaBudget:
    """The limits, and the JSON values a request's schemas have used so far."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.values = 0


def check_schema_bounds(schema: Any, param: str, budget: SchemaBudget) -> None:
    """Raise a 400 naming ``param`` when ``schema`` passes a limit or admits no finite value."""
    limits = budget.limits
    stack: list[tuple[Any, int]] = [(schema, 1)]
    has_refs = False
    while stack:
        value, depth = stack.pop()
        budget.values += 1
        if budget.values > limits.max_schema_size:
            raise invalid_request(
                f"The request's schemas hold more than {limits.max_schema_size} JSON values "
                f"together (at {param}). Simplify them or send fewer.",
                param,
                "schema_too_large",
            )
        if isinstance(value, dict):
            _check_keywords(value, param, limits)
            has_refs = has_refs or isinstance(value.get("$ref"), str)
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth >= limits.max_schema_depth and children:
            raise invalid_request(
                f"The schema at {param} nests arrays and objects more than "
                f"{limits.max_schema_depth} levels deep.",
                param,
                "schema_too_deep",
            )
        stack.extend((child, depth + 1) for child in children)
    if has_refs and not admits_finite_value(schema):
        raise invalid_request(
            f"The schema at {param} admits no finite value: a required property (or a "
            "minimum of array items) refers back to its own schema without end.",
            param,
            "invalid_schema",
        )


def check_pattern(pattern: str, param: str, limits: Limits) -> None:
    """Refuse a regex whose ``{n,m}`` repetitions pass the limit (Python's ``re`` overflows
    on ``{4294967295}``, and large counts make large automata)."""
    for match in _REPEAT.finditer(pattern):
        for bound in match.groups():
            if bound and (len(bound) > 9 or int(bound) > limits.max_pattern_repeat):
                raise invalid_request(
                    f"The pattern at {param} repeats {match[0]}; repetition bounds may be at "
                    f"most {limits.max_pattern_repeat}.",
                    param,
                    "pattern_too_large",
                )


def _check_keywords(schema: dict[str, Any], param: str, limits: Limits) -> None:
    enum = schema.get("enum")
    if isinstance(enum, list) and len(enum) > limits.max_enum_values:
        raise invalid_request(
            f"An enum at {param} has {len(enum)} values; at most {limits.max_enum_values} "
            "are allowed.",
            param,
            "enum_too_large",
        )
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        check_pattern(pattern, param, limits)
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict):
        for key in patterns:
            check_pattern(key, param, limits)


# -- schemas with no finite value --------------------------------------------------------


def admits_finite_value(root: Any) -> bool:
    """Whether some finite JSON value may satisfy ``root``, as far as its structure tells.

    A least fixpoint over the subschemas: a subschema is finite when its ``$ref``, every
    ``allOf`` branch and some ``anyOf``/``oneOf`` branch are, and some allowed type can be
    built from finite parts (a scalar, an object whose required properties are finite, an
    array whose required items are). Whatever this cannot judge counts as finite, so only
    schemas that are surely infinite are refused.
    """
    nodes: dict[int, dict[str, Any]] = {}
    for node in _subschemas(root):
        nodes[id(node)] = node
    finite: set[int] = set()
    dependents: defaultdict[int, set[int]] = defaultdict(set)
    for key, node in nodes.items():
        for dependency in _dependencies(node, root):
            dependents[id(dependency)].add(key)
    pending = deque(nodes)
    while pending:
        key = pending.popleft()
        if key in finite or not _finite(nodes[key], root, finite):
            continue
        finite.add(key)
        pending.extend(dependents[key] - finite)
    return not isinstance(root, dict) or id(root) in finite


def _subschemas(root: Any) -> Iterator[dict[str, Any]]:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(_dependencies(node, root))


def _children(node: dict[str, Any]) -> Iterator[Any]:
    for keyword in _ONE:
        child = node.get(keyword)
        if isinstance(child, list):
            yield from child
        elif child is not None:
            yield child
    for keyword in _LIST:
        children = node.get(keyword)
        if isinstance(children, list):
            yield from children
    for keyword in _MAP:
        children = node.get(keyword)
        if isinstance(children, dict):
            yield from children.values()


def _dependencies(node: dict[str, Any], root: Any) -> Iterator[Any]:
    target = _resolve(node.get("$ref"), root)
    if target is not None:
        yield target
    yield from _children(node)


def _finite(node: dict[str, Any], root: Any, finite: set[int]) -> bool:
    def ok(schema: Any) -> bool:
        if isinstance(schema, dict):
            return id(schema) in finite
        return schema is not False

    target = _resolve(node.get("$ref"), root)
    if target is not None and not ok(target):
        return False
    all_of, any_of, one_of = (node.get(k) for k in ("allOf", "anyOf", "oneOf"))
    if isinstance(all_of, list) and not all(ok(s) for s in all_of):
        return False
    for branches in (any_of, one_of):
        if isinstance(branches, list) and branches and not any(ok(s) for s in branches):
            return False
    if "const" in node or "enum" in node:
        return True
    types = node.get("type")
    allowed = {types} if isinstance(types, str) else set(types or ()) or None
    if allowed is None or allowed & _SCALAR_TYPES:
        return True  # no type (any value goes), or a scalar is allowed
    if "object" in allowed and _object_finite(node, ok):
        return True
    return "array" in allowed and _array_finite(node, ok)


def _object_finite(node: dict[str, Any], ok: Any) -> bool:
    properties = node.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = node.get("required")
    names = required if isinstance(required, list) else []
    return all(ok(properties[name]) for name in names if name in properties)


def _array_finite(node: dict[str, Any], ok: Any) -> bool:
    least = node.get("minItems")
    least = least if isinstance(least, int) else 0
    prefix = node.get("prefixItems")
    prefix = prefix if isinstance(prefix, list) else []
    if not all(ok(s) for s in prefix[:least]):
        return False
    return least <= len(prefix) or ok(node.get("items", True))


def _resolve(ref: Any, root: Any) -> Any:
    """The local subschema ``ref`` points to (``#`` or a JSON pointer), or ``None``."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    target = root
    pointer = unquote(ref[1:])
    if not pointer:
        return target
    if not pointer.startswith("/"):
        return None  # an anchor: not resolved here
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return None
    return target
