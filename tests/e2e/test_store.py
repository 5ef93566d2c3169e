"""The response store through real server processes: a crash and restart on the same SQLite
file, a graceful stop, retention (TTL, count and bytes), and one file per process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response

from .conftest import REQUEST_TIMEOUT, ServerProcess
from .test_responses import SHORT, sse_events, wait_for_text

Start = Callable[..., ServerProcess]
Sdk = Callable[[ServerProcess], openai.OpenAI]
Endless = Callable[[openai.OpenAI], Response]


@pytest.fixture
def http_to() -> Iterator[Callable[[ServerProcess], httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(server: ServerProcess) -> httpx.Client:
        clients.append(httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def replay(
    http: httpx.Client, response_id: str, after: int | None = None
) -> list[dict[str, object]]:
    query = "stream=true" + (f"&starting_after={after}" if after is not None else "")
    with http.stream("GET", f"/v1/responses/{response_id}?{query}") as answer:
        assert answer.status_code == 200
        events, _ = sse_events(answer)
    return events


def test_kill_9_and_restart_fails_running_work_and_keeps_finished_work(
    sdk: Sdk,
    start_server: Start,
    tmp_path: Path,
    endless: Endless,
    http_to: Callable[[ServerProcess], httpx.Client],
) -> None:
    store = f"sqlite:{tmp_path / 'responses.db'}"
    first = start_server("--store", store)
    client, http = sdk(first), http_to(first)
    with http.stream(
        "POST", "/v1/responses", json={"input": "Greet me.", "stream": True, **SHORT}
    ) as answer:
        streamed, _ = sse_events(answer)
    finished = client.responses.retrieve(str(streamed[0]["response"]["id"]))  # type: ignore[index]
    assert finished.status == "completed"
    follow_up = client.responses.create(
        model="default", input="Again.", previous_response_id=finished.id, extra_body=SHORT
    )
    items = client.responses.input_items.list(follow_up.id).data
    running = endless(client)
    wait_for_text(client, running.id)
    first.kill()

    second = start_server("--store", store)
    client, http = sdk(second), http_to(second)
    failed = client.responses.retrieve(running.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.model_dump()["code"] == "server_restarted"
    events = replay(http, running.id)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # Finished work is whole: the object, its event log, its input items, its chain.
    assert client.responses.retrieve(finished.id) == finished
    assert replay(http, finished.id) == streamed
    assert replay(http, finished.id, after=2) == streamed[3:]
    assert client.responses.input_items.list(follow_up.id).data == items
    chained = client.responses.create(
        model="default", input="Once more.", previous_response_id=follow_up.id, extra_body=SHORT
    )
    assert chained.status == "completed"


def test_sigterm_lets_work_finish_within_the_grace_then_cancels(
    sdk: Sdk, start_server: Start, tmp_path: Path, endless: Endless
) -> None:
    store = f"sqlite:{tmp_path / 'responses.db'}"
    patient = start_server("--store", store, "--shutdown-grace", "120")
    client = sdk(patient)
    short = client.responses.create(
        model="default", input="Count to three.", background=True, max_output_tokens=24
    )
    patient.send_signal(signal.SIGTERM)
    assert patient.wait(120) == 0

    hasty = start_server("--store", store, "--shutdown-grace", "1")
    client = sdk(hasty)
    assert client.responses.retrieve(short.id).status in ("completed", "incomplete")
    cut = endless(client)
    wait_for_text(client, cut.id)
    hasty.send_signal(signal.SIGTERM)
    assert hasty.wait(60) == 0

    client = sdk(start_server("--store", store))
    assert client.responses.retrieve(short.id).status in ("completed", "incomplete")
    stopped = client.responses.retrieve(cut.id)
    assert stopped.status == "cancelled" and stopped.output_text


def test_ttl_expires_finished_responses(sdk: Sdk, start_server: Start) -> None:
    client = sdk(start_server("--store-ttl", "2s"))
    done = client.responses.create(model="default", input="Greet me.", extra_body=SHORT)
    assert client.responses.retrieve(done.id).status == "completed"
    time.sleep(2.5)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(done.id)


def test_count_and_byte_bounds_evict_the_oldest(sdk: Sdk, start_server: Start) -> None:
    client = sdk(start_server("--store", "memory", "--store-max-responses", "3"))
    ids = [
        client.responses.create(model="default", input="Greet me.", extra_body=SHORT).id
        for _ in range(5)
    ]
    for gone in ids[:2]:
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(gone)
    assert [client.responses.retrieve(kept).status for kept in ids[2:]] == ["completed"] * 3

    # Inputs of about 55 KB, too long for the model's context: each response fails, and is
    # stored with what GET and input_items need (its input once), under the byte bound.
    client = sdk(start_server("--store-max-bytes", "150K"))
    padding = "Just say hello. " + "(ignore this padding) " * 2500
    ids = [
        client.responses.create(model="default", input=padding, truncation="auto").id
        for _ in range(4)
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])
    last = client.responses.retrieve(ids[-1])
    assert last.status == "failed" and last.error is not None
    [item] = client.responses.input_items.list(ids[-1]).data
    assert item.model_dump()["content"][0]["text"] == padding


def test_a_second_process_on_the_same_file_is_refused(start_server: Start, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 'responses.db'}"
    start_server("--store", store)
    second = subprocess.run(
        [sys.executable, "-m", "exloop.server.cli", "serve", "--port", "1", "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1
    assert "in use by another exloop process" in second.stderr
