"""The test-only steering of agent turns (``--test-steer-tool``)."""

from __future__ import annotations

from exloop.engine.sampling import SamplingParams
from exloop.orchestrator.items import FunctionCall, FunctionCallOutput, InputText, Message
from exloop.orchestrator.spec import RunSpec, ToolPolicy
from exloop.orchestrator.tool_defs import FunctionTool, NamespaceTool
from exloop.server.steering import steered

TOOLS = ToolPolicy(
    tools=(
        FunctionTool("exec_command", None, None, None),
        FunctionTool("view_image", None, None, None),
    )
)
USER = Message(role="user", content=[InputText("Run echo hello.")])
CALL = FunctionCall("call_1", "exec_command", '{"cmd": "echo hello"}')
OUTPUT = FunctionCallOutput("call_1", "hello")


def spec(*items: object, tools: ToolPolicy = TOOLS) -> RunSpec:
    hot = SamplingParams(temperature=0.8)
    return RunSpec(input=items, model="m", tools=tools, sampling=hot)  # type: ignore[arg-type]


def test_a_new_turn_must_call_the_tool_and_its_result_is_answered() -> None:
    opening = steered(spec(USER), "exec_command")
    assert opening.tools.forced == "exec_command" and opening.tools.mode == "auto"
    answering = steered(spec(USER, CALL, OUTPUT), "exec_command")
    assert answering.tools.mode == "none" and answering.tools.forced is None
    # Both drawn greedily, whatever the client's temperature.
    assert opening.sampling.temperature == answering.sampling.temperature == 0.0


def test_nothing_changes_without_the_option_or_the_tool() -> None:
    plain = spec(USER)
    assert steered(plain, None) is plain
    assert steered(plain, "apply_patch") is plain
    assert steered(spec(USER, tools=ToolPolicy()), "exec_command").tools == ToolPolicy()


def test_the_steered_call_writes_only_required_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {"cmd": {"type": "string"}, "yield_time_ms": {"type": "number"}},
        "required": ["cmd"],
    }
    exec_command = FunctionTool("exec_command", schema, False, None)
    inner = NamespaceTool("shell", "Shell tools.", [FunctionTool("run", schema, False, None)])
    tools = ToolPolicy(tools=(exec_command, inner))
    narrowed = {
        "type": "object",
        "properties": {"cmd": {"type": "string"}},
        "required": ["cmd"],
        "additionalProperties": False,
    }
    (top, space) = steered(spec(USER, tools=tools), "exec_command").tools.tools
    assert isinstance(top, FunctionTool) and top.parameters == narrowed
    assert space == inner  # not the steered tool
    (_, space) = steered(spec(USER, tools=tools), "shell.run").tools.tools
    assert isinstance(space, NamespaceTool)
    assert [t.parameters for t in space.tools] == [narrowed]
    assert exec_command.parameters == schema  # the request's own definition is untouched
