"""A function-calling app with strict tools, using the `openai` SDK against exloop.

Start the server first (`.venv/bin/exloop serve`), then run:

    .venv/bin/python examples/strict_tools.py [--base-url http://127.0.0.1:1234/v1]

The model's tool arguments are generated under each strict tool's JSON schema, so they always
parse and validate: the app can call its functions without defensive parsing. The loop runs
until the model answers in text (or a round limit is reached), sending each function's result
back with `previous_response_id`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from openai import OpenAI

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function",
        "name": "convert_currency",
        "description": "Convert an amount between two ISO currency codes.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "source": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "target": {"type": "string", "pattern": "^[A-Z]{3}$"},
            },
            "required": ["amount", "source", "target"],
            "additionalProperties": False,
        },
    },
]


def get_weather(city: str, unit: str) -> str:
    temperature = 21 if unit == "celsius" else 70
    return json.dumps({"city": city, "temperature": temperature, "unit": unit, "sky": "clear"})


def convert_currency(amount: float, source: str, target: str) -> str:
    rates = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "JPY": 162.0}
    if source not in rates or target not in rates:
        return json.dumps(
            {"error": f"unknown currency {source if source not in rates else target}"}
        )
    return json.dumps(
        {"amount": round(amount / rates[source] * rates[target], 2), "currency": target}
    )


FUNCTIONS: dict[str, Callable[..., str]] = {
    "get_weather": get_weather,
    "convert_currency": convert_currency,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:1234/v1")
    parser.add_argument("--question", default="What's the weather in Lisbon, in celsius?")
    parser.add_argument("--max-rounds", type=int, default=3)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key="unused")
    response = client.responses.create(
        model="default",
        input=args.question,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",  # the first turn must call a tool
        max_output_tokens=200,
    )
    for _ in range(args.max_rounds):
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            break
        outputs = []
        for call in calls:
            arguments = json.loads(call.arguments)  # valid by construction for strict tools
            result = FUNCTIONS[call.name](**arguments)
            print(f"-> {call.name}({arguments}) = {result}")
            outputs.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": result}
            )
        response = client.responses.create(
            model="default",
            previous_response_id=response.id,
            input=outputs,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="none",  # answer from the results
            max_output_tokens=120,
        )
    print(f"[{response.status}] {response.output_text}")


if __name__ == "__main__":
    main()
