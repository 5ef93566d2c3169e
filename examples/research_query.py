"""A research query: the server searches the web, reads pages, and answers with citations.

Start the server first (``exloop serve``, or with ``--search-provider searxng --searxng-url
URL`` for a SearXNG instance), then::

    python examples/research_query.py "What causes the ocean tides?"

The same question is asked three ways, with OpenAI's own SDK:

1. ``/v1/responses`` with the ``web_search`` tool, ``tool_choice`` making it search;
2. ``/v1/responses`` with ``web_search_options`` (the request always searches first);
3. ``/v1/chat/completions`` with ``web_search_options``, where citations arrive as the
   message's ``annotations``.

For each, it prints the searches (``web_search_call`` items), the answer, and its citations
(``url_citation`` annotations: a span of the answer and the page it cites).
"""

from __future__ import annotations

import argparse
import os

import openai
from openai.types.responses import Response


def show_response(title: str, response: Response) -> None:
    print(f"== {title} ({response.status})")
    for item in response.output:
        if item.type == "web_search_call":
            action = item.action
            target = action.query if action.type == "search" else getattr(action, "url", "")
            print(f"  {action.type} [{item.status}]: {target}")
            for source in getattr(action, "sources", None) or []:
                print(f"    source: {source.url}")
        elif item.type == "message":
            for part in item.content:
                if part.type == "output_text":
                    citations = [
                        (a.start_index, a.end_index, a.url, a.title)
                        for a in part.annotations
                        if a.type == "url_citation"
                    ]
                    show_answer(part.text, citations)
    print()


def show_answer(text: str, citations: list[tuple[int, int, str, str]]) -> None:
    print(f"  answer: {text.strip()}")
    for start, end, url, title in citations:
        print(f"  cites {title} <{url}> for: {text[start:end]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What causes the ocean tides?")
    parser.add_argument(
        "--base-url", default=os.environ.get("EXLOOP_BASE_URL", "http://127.0.0.1:1234/v1")
    )
    parser.add_argument("--model", default="default", help="any name: the server has one model")
    parser.add_argument("--api-key", default=os.environ.get("EXLOOP_API_KEY", "none"))
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

    # 1. The web_search tool; "include" asks for each search's sources, as with OpenAI.
    response = client.responses.create(
        model=args.model,
        input=args.question,
        tools=[{"type": "web_search", "search_context_size": "medium"}],
        # Make the model search; without tool_choice it decides. ("web_search" works too.)
        tool_choice={"type": "web_search_preview"},
        include=["web_search_call.action.sources"],
        temperature=0.3,
        max_output_tokens=300,
    )
    show_response("Responses, web_search tool", response)

    # 2. web_search_options, exloop's Responses extension (the field Chat Completions has).
    response = client.responses.create(
        model=args.model,
        input=args.question,
        extra_body={
            "web_search_options": {
                "search_context_size": "low",
                "user_location": {"type": "approximate", "approximate": {"country": "GB"}},
            }
        },
        temperature=0.3,
        max_output_tokens=300,
    )
    show_response("Responses, web_search_options", response)

    # 3. Chat Completions: the citations are the message's annotations.
    completion = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.question}],
        web_search_options={"search_context_size": "low"},
        temperature=0.3,
        max_tokens=300,
    )
    message = completion.choices[0].message
    print(f"== Chat Completions, web_search_options ({completion.choices[0].finish_reason})")
    show_answer(
        message.content or "",
        [(a.url_citation.start_index, a.url_citation.end_index, a.url_citation.url,
          a.url_citation.title) for a in message.annotations or []],
    )  # fmt: skip


if __name__ == "__main__":
    main()
