"""An agent that uses a remote MCP server's tools through exloop's Responses API (`openai` SDK).

exloop lists the server's tools, lets the model call them (arguments generated under each
tool's input schema) and runs the calls itself; the app only decides on approvals. Start an
MCP server (any that speaks streamable HTTP or SSE) and exloop; a server on this machine needs
`--fetch-allow-private`, since exloop refuses private and loopback addresses by default:

    .venv/bin/exloop serve --fetch-allow-private
    .venv/bin/python examples/mcp_agent.py --server-url http://127.0.0.1:8000/mcp \\
        "What is 2 plus 3?" [--tool add] [--approve]

Calls need approval unless `--approve` is given (then the server's tools are trusted:
`require_approval: "never"`). Without it the app shows each `mcp_approval_request` and asks on
the terminal, answering with `mcp_approval_response` items. `--tool NAME` makes the model call
that tool first (small models may not choose a tool on their own).
"""

from __future__ import annotations

import argparse
from typing import Any

from openai import OpenAI
from openai.types.responses import Response
from openai.types.responses.response_output_item import McpApprovalRequest, McpCall, McpListTools
from openai.types.responses.tool_param import Mcp

MAX_TURNS = 4


def show(response: Response) -> list[McpApprovalRequest]:
    """Print what the response did; return the approvals it waits for."""
    waiting = []
    for item in response.output:
        if isinstance(item, McpListTools):
            if item.error:
                print(f"[{item.server_label}] could not list tools: {item.error}")
            else:
                names = ", ".join(tool.name for tool in item.tools)
                print(f"[{item.server_label}] tools: {names}")
        elif isinstance(item, McpCall):
            result = item.output if item.error is None else f"error {item.error.model_dump()}"
            print(f"[{item.server_label}] {item.name}({item.arguments}) -> {result}")
        elif isinstance(item, McpApprovalRequest):
            waiting.append(item)
    if response.output_text:
        print(f"answer: {response.output_text}")
    return waiting


def run(
    client: OpenAI, server_url: str, question: str, *, tool: str | None, approve: bool
) -> Response:
    mcp: Mcp = {
        "type": "mcp",
        "server_label": "local",
        "server_url": server_url,
        "require_approval": "never" if approve else "always",
    }
    choice: Any = {"type": "mcp", "server_label": "local", "name": tool} if tool else "auto"
    response = client.responses.create(
        model="default", input=question, tools=[mcp], tool_choice=choice, max_output_tokens=200
    )
    for _ in range(MAX_TURNS):
        waiting = show(response)
        if not waiting:
            return response
        answers = []
        for request in waiting:
            prompt = f"Run {request.name}({request.arguments}) on '{request.server_label}'? [y/N] "
            answers.append(
                {
                    "type": "mcp_approval_response",
                    "approval_request_id": request.id,
                    "approve": input(prompt).strip().lower() in ("y", "yes"),
                }
            )
        response = client.responses.create(
            model="default",
            previous_response_id=response.id,
            input=answers,  # type: ignore[arg-type]
            tools=[mcp],
            max_output_tokens=200,
        )
    show(response)
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("question")
    parser.add_argument("--server-url", required=True, help="the MCP server's URL")
    parser.add_argument("--base-url", default="http://127.0.0.1:1234/v1", help="exloop's API")
    parser.add_argument("--tool", help="make the model call this tool first")
    parser.add_argument("--approve", action="store_true", help="run calls without asking")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    run(client, args.server_url, args.question, tool=args.tool, approve=args.approve)


if __name__ == "__main__":
    main()
