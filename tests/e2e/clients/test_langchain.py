"""LangChain's ChatOpenAI against exloop: ``with_structured_output(method="function_calling")``,
which forces one tool call with ``parallel_tool_calls: false``, over Chat Completions and
over the Responses API."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from ..conftest import REQUEST_TIMEOUT


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


@pytest.mark.parametrize("responses_api", [False, True], ids=["chat", "responses"])
def test_structured_output_by_function_calling(base_url: str, responses_api: bool) -> None:
    llm = ChatOpenAI(
        model="exloop",
        base_url=f"{base_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        temperature=0,
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
        use_responses_api=responses_api,
    )
    structured = llm.with_structured_output(Person, method="function_calling")
    person = structured.invoke("Ada Lovelace is 36 years old.")
    # The call's arguments follow the tool's schema, so they parse into the model.
    assert isinstance(person, Person)
    assert person.name and person.age >= 0
