"""Built-in web search in the tool loop: a scripted engine against the real loopback web."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import anyio
import pytest

from exloop.engine.protocol import GenerationRequest
from exloop.engine.sampling import SamplingParams
from exloop.orchestrator import events as ev
from exloop.orchestrator.citations import SourceLedger
from exloop.orchestrator.items import (
    InputText,
    Message,
    OpenPageAction,
    SearchAction,
    SearchSource,
    WebSearchCall,
)
from exloop.orchestrator.resource import Response
from exloop.orchestrator.service import Orchestrator
from exloop.orchestrator.spec import Echo, RunSpec, ToolPolicy, WebSearchOptions
from exloop.orchestrator.tool_defs import UserLocation
from exloop.orchestrator.web_search import forced_query, web_search_builtins
from exloop.tools.fetch import SafeFetcher
from exloop.tools.research import WebResearch
from exloop.tools.web_search import SearchRequest, SearchResult, SearxngProvider
from tests.fixtures.web import WebFixture

from .scripted import Script, ScriptedEngine, say

pytestmark = pytest.mark.anyio

QUESTION = "How far away are the flowers when a honeybee waggles for one second?"


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixture]:
    with WebFixture() as fixture:
        yield fixture


def call(name: str, **arguments: str) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def search_spec(
    *, forced: bool = True, include: tuple[str, ...] = (), **options: object
) -> RunSpec:
    web_search = WebSearchOptions(forced, "low", **options)  # type: ignore[arg-type]
    return RunSpec(
        input=(Message(role="user", content=[InputText(QUESTION)]),),
        model="m",
        tools=ToolPolicy(web_search=web_search),
        echo=Echo(include=include),
    )


def research(web: WebFixture, *, allow_private: bool = True) -> WebResearch:
    return WebResearch(SearxngProvider(web.searxng_url), SafeFetcher(allow_private=allow_private))


async def run(
    engine: ScriptedEngine, research: WebResearch, spec: RunSpec, *, rounds: int = 4
) -> tuple[Response, list[ev.StreamEvent]]:
    async with Orchestrator(
        engine, model_name="m", max_tool_rounds=rounds, builtins=web_search_builtins(research)
    ) as orch:
        handle = await orch.create(spec)
        response = await handle.wait()
        events = [e async for e in handle.events()]
    return response, events


def turns(*texts: str) -> Script:
    """The model's turns: turn n comes after n tool results. A call in AutoMode is two engine
    jobs (up to the trigger, then the call under its grammar): the second gets the rest."""

    def play(request: GenerationRequest) -> str:
        return rest(request, texts[min(len(tool_results(request)), len(texts) - 1)])

    return play


def rest(request: GenerationRequest, text: str) -> str:
    """``text`` less what the step already generated (its assistant prefix)."""
    return text.removeprefix(request.prompt.assistant_prefix)  # type: ignore[union-attr]


def kind(event: ev.StreamEvent) -> object:
    """An event's ``type``, as the stream names it."""
    return type(event).__struct_config__.tag


def tool_results(request: GenerationRequest) -> list[str]:
    """What the model read from the built-in tools, as the prompt of a later step holds it."""
    return [m.content for m in request.prompt.messages if m.role == "tool"]  # type: ignore[union-attr]


async def test_forced_first_search_writes_the_item_and_cites_the_page(web: WebFixture) -> None:
    answer = "One second of waggling means about one kilometre [1]."
    engine = ScriptedEngine(
        [say(call("web_search", query="honeybee waggle distance")), say(answer)]
    )
    response, events = await run(engine, research(web), search_spec())

    # The first step is generated under the call grammar for the search tool alone; every
    # step's prompt lists the same tools.
    first = engine.jobs[0].request
    assert first.constraint is not None and isinstance(first.constraint.value, str)
    assert r"\"web_search\"" in first.constraint.value
    assert "open_page" not in first.constraint.value
    for job in engine.jobs:
        listed = [t.name for t in job.request.prompt.tools]  # type: ignore[union-attr]
        assert listed == ["web_search", "open_page"]

    search, message = response.output
    assert isinstance(search, WebSearchCall) and isinstance(message, Message)
    assert search.status == "completed" and search.id.startswith("ws_")
    # Sources are listed only when the request includes them, as OpenAI does.
    assert search.action == SearchAction(query="honeybee waggle distance")
    (read,) = tool_results(engine.jobs[1].request)
    assert (
        f"[1] How honeybees share directions: the waggle dance\nURL: {web.article_url('honeybees')}"
        in read
    )
    assert "one kilometre" in read

    (part,) = message.content
    assert part.text == answer  # type: ignore[union-attr]
    (citation,) = part.annotations  # type: ignore[union-attr]
    assert citation.url == web.article_url("honeybees")
    assert citation.title == "How honeybees share directions: the waggle dance"
    assert answer[citation.start_index : citation.end_index] == "[1]"

    kinds = [kind(e) for e in events if getattr(e, "output_index", None) == 0]
    assert kinds == [
        "response.output_item.added",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_item.done",
    ]
    message_events = [kind(e) for e in events if getattr(e, "output_index", None) == 1]
    assert message_events[-4:] == [
        "response.output_text.annotation.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    added = next(e for e in events if isinstance(e, ev.OutputTextAnnotationAdded))
    assert added.annotation == citation and added.annotation_index == 0


async def test_a_cut_off_answer_keeps_its_citations(web: WebFixture) -> None:
    search = call("web_search", query="honeybee waggle")
    engine = ScriptedEngine([say(search), say("Bees waggle [1]. " + "and so on " * 50)])
    # The scripted engine streams three characters a token: room for the call and a few more.
    budget = -(-len(search) // 3) + 8
    response, _ = await run(
        engine, research(web), replace(search_spec(), sampling=SamplingParams(max_tokens=budget))
    )

    assert response.status == "incomplete"
    message = response.output[-1]
    assert isinstance(message, Message) and message.status == "incomplete"
    (citation,) = message.content[0].annotations  # type: ignore[union-attr]
    assert citation.url == web.article_url("honeybees")


async def test_empty_query_falls_back_to_the_question_and_sources_when_included(
    web: WebFixture,
) -> None:
    engine = ScriptedEngine([say(call("web_search", query="  ")), say("The dance tells distance.")])
    spec = search_spec(
        include=("web_search_call.action.sources",), user_location=UserLocation(country="GB")
    )
    before = len(web.requests)
    response, _ = await run(engine, research(web), spec)

    search = response.output[0]
    assert isinstance(search, WebSearchCall) and isinstance(search.action, SearchAction)
    assert search.action.query == QUESTION
    assert search.action.sources[0] == SearchSource(url=web.article_url("honeybees"))
    (searxng,) = [r for r in web.requests[before:] if r.path == "/searxng/search"]
    assert searxng.query["q"] == QUESTION
    assert searxng.query["language"] == "en-GB"  # region from user_location


async def test_provider_failure_is_a_tool_result_not_a_failed_response(web: WebFixture) -> None:
    broken = WebResearch(SearxngProvider(web.url("/status/503")), SafeFetcher(allow_private=True))
    engine = ScriptedEngine([say(call("web_search", query="tides")), say("I could not search.")])
    response, events = await run(engine, broken, search_spec())

    assert response.status == "completed"
    search, message = response.output
    assert isinstance(search, WebSearchCall) and search.status == "failed"
    assert not any(isinstance(e, ev.WebSearchCallCompleted) for e in events)
    (read,) = tool_results(engine.jobs[1].request)
    assert "SearXNG answered HTTP 503" in read
    assert message.content[0].annotations == []  # type: ignore[union-attr]


class _Results:
    """A provider with fixed results."""

    def __init__(self, *urls: str) -> None:
        self.urls = urls

    async def search(self, request: SearchRequest) -> list[SearchResult]:
        return [SearchResult(f"Result {i}", url, f"snippet {i}") for i, url in enumerate(self.urls)]


async def test_internal_pages_are_refused_and_reported_to_the_model(web: WebFixture) -> None:
    urls = (
        web.article_url("tides"),  # 127.0.0.1: loopback
        "http://10.0.0.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        # The fixture is trusted as "localhost" only: the redirect's second hop is refused.
        web.url("/redirect?to=http://169.254.169.254/", host="localhost"),
    )
    guarded = WebResearch(_Results(*urls), SafeFetcher(trusted_hosts=["localhost"], timeout=3))
    engine = ScriptedEngine([say(call("web_search", query="tides")), say("Nothing.")])
    before = len(web.requests)
    with anyio.fail_after(5):
        response, _ = await run(engine, guarded, search_spec())

    assert response.status == "completed"
    assert response.output[0].status == "completed"
    (read,) = tool_results(engine.jobs[1].request)
    unread = read.split("Pages that could not be read")[1]
    for number, address in enumerate(["127.0.0.1", "10.0.0.1", "169.254.169.254"], start=1):
        assert f"[{number}] Refused to fetch" in unread and address in unread
    assert "[4] Refused to fetch http://169.254.169.254/" in unread
    assert [r.path for r in web.requests[before:]] == ["/redirect"]


async def test_max_tool_rounds_caps_searches_and_sources_number_run_wide(web: WebFixture) -> None:
    def search_or_answer(request: GenerationRequest) -> str:
        if request.prompt.tools:  # type: ignore[union-attr]
            rounds = len(tool_results(request))
            query = ["honeybee waggle", "sourdough starter"][rounds % 2]
            return rest(request, call("web_search", query=query))
        return "Bees dance [1] and starters need feeding [3]."

    engine = ScriptedEngine([search_or_answer])
    response, _ = await run(engine, research(web), search_spec(), rounds=2)

    assert [type(i) for i in response.output] == [WebSearchCall, WebSearchCall, Message]
    assert response.metadata.get("exloop_max_tool_rounds_reached") == "true"
    assert engine.jobs[-1].request.prompt.tools == ()  # type: ignore[union-attr]
    first, second = tool_results(engine.jobs[-1].request)
    # The second search's sources continue the numbering; a page seen before keeps its number.
    assert "[1] How honeybees share directions: the waggle dance\nURL: " in first
    assert "[3] Keeping a sourdough starter alive\nURL: " in second
    message = response.output[-1]
    urls = [a.url for a in message.content[0].annotations]  # type: ignore[union-attr]
    assert urls == [web.article_url("honeybees"), web.article_url("sourdough")]


async def test_open_page_writes_an_open_page_item_and_joins_the_sources(web: WebFixture) -> None:
    bees, volcanoes = web.article_url("honeybees"), web.article_url("volcanoes")
    engine = ScriptedEngine(
        [
            turns(
                call("web_search", query="honeybee waggle"),
                call("open_page", url=bees) + call("open_page", url=volcanoes),
                "See [1] and [9].",
            )
        ]
    )
    response, _ = await run(engine, research(web), search_spec())

    _, *opened, message = response.output
    assert [o.action for o in opened] == [  # type: ignore[union-attr]
        OpenPageAction(url=bees),
        OpenPageAction(url=volcanoes),
    ]
    assert all(o.status == "completed" for o in opened)
    searched, bees_page, volcanoes_page = tool_results(engine.jobs[-1].request)
    # A page the search showed keeps its number; a new page takes the next one.
    assert bees_page.startswith("[1] How honeybees share directions: the waggle dance")
    shown = searched.count("\nURL: ")
    assert volcanoes_page.startswith(f"[{shown + 1}] Why some volcanoes explode")
    urls = [a.url for a in message.content[0].annotations]  # type: ignore[union-attr]
    assert urls == [bees] + ([volcanoes] if shown + 1 == 9 else [])


async def test_open_page_failure_is_a_tool_result(web: WebFixture) -> None:
    engine = ScriptedEngine(
        [turns(call("web_search", query="tides"), call("open_page", url="http://10.0.0.1/"), "ok")]
    )
    response, _ = await run(engine, research(web, allow_private=False), search_spec())

    opened = response.output[1]
    assert isinstance(opened, WebSearchCall) and opened.status == "failed"
    assert "Could not open the page: Refused to fetch" in tool_results(engine.jobs[-1].request)[1]
    assert response.status == "completed"


async def test_the_seed_descriptions_replace_the_tools_own(web: WebFixture) -> None:
    engine = ScriptedEngine([say(call("web_search", query="honeybee")), say("ok")])
    spec = search_spec(search_description="Look it up.", extract_description="Read a page.")
    await run(engine, research(web), spec)
    tools = engine.jobs[1].request.prompt.tools  # type: ignore[union-attr]
    assert [(t.name, t.description, t.strict) for t in tools] == [
        ("web_search", "Look it up.", True),
        ("open_page", "Read a page.", True),
    ]
    assert tools[0].parameters["required"] == ["query"]
    assert tools[0].parameters["additionalProperties"] is False


async def test_no_web_tools_without_web_search(web: WebFixture) -> None:
    engine = ScriptedEngine([say("plain")])
    spec = RunSpec(input=(Message(role="user", content=[InputText("hi")]),), model="m")
    response, _ = await run(engine, research(web), spec)
    assert engine.jobs[0].request.prompt.tools == ()  # type: ignore[union-attr]
    assert response.output[0].content[0].annotations == []  # type: ignore[union-attr]


async def test_cancelling_during_a_search_leaves_its_item_incomplete(web: WebFixture) -> None:
    slow = WebResearch(_Results(web.url("/slow?seconds=3")), SafeFetcher(allow_private=True))
    engine = ScriptedEngine([say(call("web_search", query="slow"))])
    async with Orchestrator(engine, model_name="m", builtins=web_search_builtins(slow)) as orch:
        handle = await orch.create(replace(search_spec(), background=True))
        with anyio.fail_after(5):
            while not handle.response.output:
                await anyio.sleep(0.01)
            response = await orch.cancel(handle.id)
    assert response.status == "cancelled"
    assert response.output[0].status == "incomplete"


def test_a_forced_query_off_the_question_falls_back_to_it() -> None:
    assert forced_query("What do you want to know?", QUESTION) == QUESTION
    assert forced_query("", QUESTION) == QUESTION
    assert forced_query("honeybee dance distance", QUESTION) == "honeybee dance distance"
    assert forced_query("météo Paris", "Quel temps fait-il à Paris ?") == "météo Paris"
    assert forced_query("weather", "天気は？") == "weather"  # no content word to compare
    assert forced_query("anything", None) == "anything"


# -- the citation rule ---------------------------------------------------------------------


def ledger() -> SourceLedger:
    sources = SourceLedger()
    sources.add(
        "http://a.test/bees",
        "How honeybees share directions",
        "Foragers dance the waggle dance; one second of waggling is about one kilometre.",
    )
    sources.add(
        "http://b.test/tides",
        "What causes the ocean tides",
        "The moon's gravity pulls the oceans into two bulges, giving two high tides a day.",
    )
    return sources


def test_markers_cite_known_numbers_only() -> None:
    text = "Bees waggle [1]. Tides follow the moon [1, 2]. Unknown [7]."
    citations = ledger().cite(text)
    spans = [(text[c.start_index : c.end_index], c.url) for c in citations]
    assert spans == [
        ("[1]", "http://a.test/bees"),
        ("[1, 2]", "http://a.test/bees"),
        ("[1, 2]", "http://b.test/tides"),
    ]


def test_a_written_url_or_title_cites_its_source() -> None:
    text = "Read http://b.test/tides and 'how honeybees share directions'."
    citations = ledger().cite(text)
    assert [(text[c.start_index : c.end_index], c.title) for c in citations] == [
        ("http://b.test/tides", "What causes the ocean tides"),
        ("how honeybees share directions", "How honeybees share directions"),
    ]


def test_a_paraphrase_cites_the_source_it_restates() -> None:
    text = (
        "Hello! The moon's gravity makes two tides a day. Oceans bulge twice.\n"
        "Foragers waggle: a second of waggling is a kilometre."
    )
    citations = ledger().cite(text)
    cited = [(text[c.start_index : c.end_index], c.url) for c in citations]
    assert cited == [
        ("The moon's gravity makes two tides a day.", "http://b.test/tides"),
        ("Foragers waggle: a second of waggling is a kilometre.", "http://a.test/bees"),
    ]


def test_urls_neither_split_sentences_nor_count_as_shared_words() -> None:
    sources = SourceLedger()
    sources.add("http://127.0.0.1:8080/a", "Alpha page", "See http://127.0.0.1:8080/articles/index")
    assert sources.cite("More at http://127.0.0.1:8080/articles/index today.") == []
    text = "One waggle run of 1.5 seconds means 1.5 kilometres to the forager's flowers. Next."
    (citation,) = ledger().cite(text)
    assert text[citation.start_index : citation.end_index] == text.removesuffix(" Next.")


def test_a_sentence_restating_the_question_cites_nothing() -> None:
    sources = SourceLedger("How do foragers waggle to show the kilometre?")
    sources.add("http://a.test/bees", "Bees", "Foragers waggle: one second is one kilometre.")
    assert sources.cite("Foragers waggle to show the kilometre.") == []
    (citation,) = sources.cite("Foragers waggle one second per kilometre.")
    assert citation.url == "http://a.test/bees"


def test_explicit_citations_turn_paraphrase_attribution_off() -> None:
    text = "The moon's gravity makes two tides a day. Bees dance [1]."
    assert [c.url for c in ledger().cite(text)] == ["http://a.test/bees"]


def test_nothing_is_cited_without_sources_or_overlap() -> None:
    assert SourceLedger().cite("Anything [1].") == []
    assert ledger().cite("I like turtles and green apples.") == []
