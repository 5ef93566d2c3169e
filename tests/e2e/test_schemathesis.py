"""Schemathesis against a real server: valid and invalid requests generated from the API's
OpenAPI document, none of which may get a 5xx (``not_a_server_error``).

The document is the server's own ``/openapi.json``, with the output tokens of valid requests
bounded. The server runs with a small context so that any request that does generate ends
quickly, and searches a closed local port; the examples per route are few, so the run stays
short.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from .conftest import ServerProcess

#: Examples per route and mode (valid, invalid), drawn deterministically.
EXAMPLES = 15


def api_document(base_url: str) -> dict[str, Any]:
    """The server's own ``/openapi.json`` (every route, schemas from the msgspec types it
    decodes and encodes), with generation bounded so that valid requests end quickly."""
    served = httpx.get(f"{base_url}/openapi.json", timeout=30.0)
    served.raise_for_status()
    document: dict[str, Any] = served.json()
    components = document["components"]["schemas"]
    # Valid requests generate: a token or two is enough to exercise the whole path. (An enum,
    # as schemathesis writes a JSON Schema integer as 1.0 too, which msgspec refuses.)
    for name, field in (("ResponsesRequest", "max_output_tokens"), ("ChatRequest", "max_tokens")):
        components[name]["properties"][field] = {"enum": [1, 2]}
        components[name].setdefault("required", []).append(field)
    return document


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerProcess]:
    # A port held bound but not listening: searches fail at once (connection refused).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        searxng = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with ServerProcess(
            "--n-ctx", "256", "--search-provider", "searxng", "--searxng-url", searxng
        ) as server:
            yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(api_document(fuzzed_server.base_url))
    schema.config.update(base_url=fuzzed_server.base_url, request_timeout=120)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    # Hypothesis driven directly: schemathesis's pytest loader does not run on pytest 9.
    operations = sum(1 for _ in api_schema.get_all_operations())

    @hypothesis.settings(
        max_examples=EXAMPLES * operations,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=api_schema.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    run()
