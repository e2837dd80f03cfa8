"""Property tests of syncq.chat: what a prompt carries beside its text survives the log, and
what another device stored is either read or refused with MalformedRecord, never another error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncq import chat
from syncq.chat import LlmInput, Message, OutputFormat, TokenLogprob, Tool, ToolCall
from syncq.errors import InvalidInput, MalformedRecord
from syncq.ids import DeviceId, PromptId
from syncq.records import Prompt, PromptKind, Result, RunStatus, decode, encode

NAME = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
CALL_ID = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
TEXT = st.text(max_size=40)
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
SCHEMA: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        JSON_SCALAR,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)
CALL = st.builds(ToolCall, id=CALL_ID, name=NAME, arguments=TEXT)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Message, ...]:
    """A valid conversation: tool turns answer only calls made before them."""
    turns: list[Message] = []
    called: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        role = draw(
            st.sampled_from(
                ["system", "user", "assistant", "tool"] if called else ["system", "user", "assistant"]
            )
        )
        if role == "assistant":
            calls = tuple(draw(st.lists(CALL, max_size=3)))
            called += [c.id for c in calls]
            turns.append(
                Message(role="assistant", content=draw(TEXT), tool_calls=calls, name=draw(st.just("") | NAME))
            )
        elif role == "tool":
            turns.append(
                Message(
                    role="tool",
                    content=draw(TEXT),
                    tool_call_id=draw(st.sampled_from(called)),
                    name=draw(st.just("") | NAME),
                )
            )
        else:
            turns.append(Message(role=role, content=draw(TEXT)))
    return tuple(turns)


@st.composite
def llm_inputs(draw: st.DrawFn) -> LlmInput:
    tools = tuple(
        Tool(name=name, description=draw(TEXT), parameters=draw(SCHEMA))
        for name in draw(st.lists(NAME, max_size=4, unique=True))
    )
    choice = draw(st.sampled_from(["auto", "none", "required"] if tools else ["auto", "none"]))
    forced = draw(st.just("") | st.sampled_from([t.name for t in tools])) if tools else ""
    fmt = draw(
        st.none()
        | st.just(OutputFormat(type="json_object"))
        | st.builds(
            OutputFormat, type=st.just("json_schema"), schema=SCHEMA.filter(bool), name=st.just("") | NAME
        )
    )
    return LlmInput(
        messages=draw(conversations()),
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        format=fmt,
        stop=tuple(
            draw(st.lists(st.text(min_size=1, max_size=chat.MAX_STOP_CHARS), max_size=chat.MAX_STOPS))
        ),
        inputs=tuple(draw(st.lists(TEXT, max_size=4))),
    )


def gpu_result(**fields: Any) -> Result:
    """A done run of one prompt on a node named gpu, with ``fields`` set."""
    return Result(
        prompt_id=PromptId("01JDX4ZZZZZZZZZZZZZZZZZZZZ"),
        node=DeviceId("cd" * 32),
        node_name="gpu",
        attempt=1,
        status=RunStatus.DONE,
        started_at=1,
        finished_at=2,
        **fields,
    )


def stored(wire: object) -> object:
    """What a reader gets back of a dict stored in the log: its JSON, parsed."""
    return json.loads(json.dumps(wire))


@given(llm_inputs())
def test_llm_input_round_trips_through_its_wire_form(llm: LlmInput) -> None:
    assert chat.check(llm) is llm
    assert LlmInput.from_wire(stored(llm.to_wire())) == llm


@given(llm_inputs(), st.text(min_size=1, max_size=40), st.integers(0, 2**40))
def test_a_prompt_with_an_llm_field_round_trips(llm: LlmInput, text: str, created: int) -> None:
    prompt = Prompt(
        id=PromptId("01JDX4ZZZZZZZZZZZZZZZZZZZZ"),
        model="smollm2-135m",
        kind=PromptKind.LLM,
        input=text,
        params={"max_tokens": 16},
        created_at=created,
        author=DeviceId("ab" * 32),
        llm=llm,
    )
    assert Prompt.from_wire(prompt.id, decode(encode(prompt.to_wire()))) == prompt
    plain = Prompt.from_wire(prompt.id, {k: v for k, v in prompt.to_wire().items() if k != "llm"})
    assert plain.llm is None and plain.input == text  # what an older node wrote and reads


LOGPROB = st.builds(
    TokenLogprob,
    token=TEXT,
    logprob=st.floats(max_value=0, allow_nan=False, allow_infinity=False),
    top=st.lists(
        st.tuples(TEXT, st.floats(max_value=0, allow_nan=False, allow_infinity=False)), max_size=3
    ).map(tuple),
)


@given(
    st.lists(CALL, max_size=4),
    st.sampled_from(["", "stop", "length", "tool_calls"]),
    st.lists(LOGPROB, max_size=4),
)
def test_a_result_with_tool_calls_round_trips(
    calls: list[ToolCall], finish: str, logprobs: list[TokenLogprob]
) -> None:
    result = gpu_result(
        finish=finish,
        tool_calls=tuple(calls),
        logprobs=tuple(logprobs),
    )
    assert Result.from_wire(result.key, decode(encode(result.to_wire()))) == result


# Text as another device may store it: JSON's "\ud800" escape reads as a lone surrogate.
STORED_TEXT = st.text(
    alphabet=st.characters(exclude_categories=()) | st.sampled_from("\ud800\udfff"), max_size=6
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | STORED_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "messages",
        "tools",
        "tool_choice",
        "forced_tool",
        "format",
        "stop",
        "inputs",
        "role",
        "content",
        "tool_calls",
        "tool_call_id",
        "name",
        "id",
        "arguments",
        "type",
        "schema",
        "parameters",
        "description",
    ]
)
# Shapes near the real one: the field's own keys, holding lists of dicts with the turns' keys.
NEAR = st.recursive(
    JSONISH,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=400)
@given(JSONISH | NEAR)
def test_from_wire_reads_or_refuses_with_malformed_record_only(wire: object) -> None:
    try:
        llm = LlmInput.from_wire(wire)
    except MalformedRecord:
        return
    assert LlmInput.from_wire(stored(llm.to_wire())) == llm  # what it read is valid


@given(llm_inputs(), st.data())
def test_a_valid_field_with_one_part_broken_is_refused(llm: LlmInput, data: st.DataObject) -> None:
    wire = stored(llm.to_wire())
    assert isinstance(wire, dict)
    key = data.draw(st.sampled_from(["messages", "tools", "stop", "inputs", "tool_choice", "format"]))
    wire[key] = data.draw(st.sampled_from([7, "text", {"a": 1}, [None], ["x", 3], "maybe"]))
    if key == "tool_choice" and wire[key] in chat.TOOL_CHOICES:
        return
    with pytest.raises(MalformedRecord):
        LlmInput.from_wire(wire)


def paths(value: object, here: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every place inside a JSON value, as the keys and indexes that lead there."""
    found = [here]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*here, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += paths(inner, (*here, i))
    return found


@settings(max_examples=300)
@given(llm_inputs(), st.data())
def test_a_valid_field_changed_anywhere_is_read_or_refused_with_malformed_record(
    llm: LlmInput, data: st.DataObject
) -> None:
    wire = stored(llm.to_wire())
    path = data.draw(st.sampled_from(paths(wire)[1:] or [("messages",)]))
    target: Any = wire
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(JSONISH)
    try:
        read = LlmInput.from_wire(wire)
    except MalformedRecord:
        return
    assert LlmInput.from_wire(stored(read.to_wire())) == read


@given(llm_inputs(), st.data())
def test_a_lone_surrogate_anywhere_is_refused_with_malformed_record(
    llm: LlmInput, data: st.DataObject
) -> None:
    # It failed with UnicodeEncodeError: json.loads reads "\ud800" as a lone surrogate.
    wire = stored(llm.to_wire())
    assert isinstance(wire, dict)
    wire.setdefault("stop", ["END"])
    texts = [p for p in paths(wire) if p and isinstance(lookup(wire, p), str)]
    path = data.draw(st.sampled_from(texts))
    lookup(wire, path[:-1])[path[-1]] += "\ud800"
    with pytest.raises(MalformedRecord):
        LlmInput.from_wire(wire)


def lookup(value: Any, path: tuple[object, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@given(st.lists(NAME, min_size=0, max_size=3, unique=True), NAME)
def test_a_forced_tool_must_be_offered(names: list[str], forced: str) -> None:
    llm = LlmInput(tools=tuple(Tool(name=n) for n in names), forced_tool=forced)
    if forced in names:
        assert chat.check(llm) is llm
    else:
        with pytest.raises(InvalidInput, match="not among the tools"):
            chat.check(llm)


@given(conversations(), CALL_ID)
def test_a_tool_turn_must_answer_an_earlier_call(turns: tuple[Message, ...], answered: str) -> None:
    earlier = {c.id for m in turns for c in m.tool_calls}
    llm = LlmInput(messages=(*turns, Message(role="tool", content="42", tool_call_id=answered)))
    if answered in earlier:
        assert chat.check(llm) is llm
    else:
        with pytest.raises(InvalidInput, match="answers no earlier tool call"):
            chat.check(llm)
    # A call answered before it is made does not count.
    later = LlmInput(
        messages=(
            Message(role="tool", content="early", tool_call_id=answered),
            Message(role="assistant", tool_calls=(ToolCall(id=answered, name="t", arguments="{}"),)),
        )
    )
    with pytest.raises(InvalidInput, match="answers no earlier tool call"):
        chat.check(later)


@given(st.lists(st.text(min_size=1, max_size=chat.MAX_STOP_CHARS), min_size=0, max_size=8))
def test_at_most_four_stop_strings(stops: list[str]) -> None:
    llm = LlmInput(stop=tuple(stops))
    if len(stops) <= chat.MAX_STOPS:
        assert chat.check(llm) is llm
    else:
        with pytest.raises(InvalidInput, match="at most 4 strings"):
            chat.check(llm)


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"properties": schema}
    return schema


@given(st.integers(0, 2 * chat.MAX_SCHEMA_DEPTH), st.booleans())
def test_schemas_may_nest_only_so_deep(depth: int, in_a_tool: bool) -> None:
    schema = nested(depth)
    llm = (
        LlmInput(tools=(Tool(name="t", parameters=schema),))
        if in_a_tool
        else LlmInput(format=OutputFormat(type="json_schema", schema=schema))
    )
    # ``nested(d)`` holds d + 1 levels of objects below the schema's top.
    if depth < chat.MAX_SCHEMA_DEPTH:
        assert chat.check(llm) is llm
    else:
        with pytest.raises(InvalidInput, match="nests deeper than"):
            chat.check(llm)
        with pytest.raises(MalformedRecord):  # and the same, stored by another device
            LlmInput.from_wire(stored(llm.to_wire()))


@given(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.none() | TEXT}
        ),
        min_size=1,
        max_size=6,
    )
)
def test_dict_turns_convert_to_the_messages_they_name(turns: list[dict[str, Any]]) -> None:
    messages = chat.messages_from(turns)
    assert [(m.role, m.content) for m in messages] == [(t["role"], t["content"] or "") for t in turns]
    assert chat.messages_from(messages) == messages  # Message turns pass as they are


@given(
    st.sampled_from(["minItems", "maxItems", "minLength", "maxLength", "minProperties", "pattern"]),
    st.integers(0, 10**12) | st.floats(0, 1e300) | st.just(float("inf")),
    st.booleans(),
)
def test_schemas_may_repeat_a_thing_only_so_often(keyword: str, count: float, in_a_tool: bool) -> None:
    # maxLength 50,000 crashed llama.cpp's grammar parser (SIGSEGV) in the worker; maxItems
    # 10**9 made the converter exhaust memory. Refused before any node queues or runs it.
    if keyword == "pattern":
        count = int(min(count, 10**12))
        schema: dict[str, Any] = {"type": "string", "pattern": f"^(ab){{2,{count}}}$"}
    else:
        schema = {"type": "string", keyword: count}
    schema = {"type": "object", "properties": {"x": schema}}
    llm = (
        LlmInput(tools=(Tool(name="t", parameters=schema),))
        if in_a_tool
        else LlmInput(format=OutputFormat(type="json_schema", schema=schema))
    )
    if count <= chat.MAX_SCHEMA_REPEAT:
        assert chat.check(llm) is llm
    else:
        with pytest.raises(InvalidInput, match="repeats something more than"):
            chat.check(llm)
        with pytest.raises(MalformedRecord):  # and the same, stored by another device
            LlmInput.from_wire(stored(llm.to_wire()))


def test_a_pattern_with_a_huge_count_is_refused() -> None:
    schema = {"type": "string", "pattern": "a{" + "9" * 5000 + "}"}  # int() refuses 4,300+ digits
    with pytest.raises(InvalidInput, match="repeats"):
        chat.check(LlmInput(format=OutputFormat(type="json_schema", schema=schema)))


@given(
    st.sampled_from([10**400, -(10**400), float("nan"), float("inf"), float("-inf")]),
    st.booleans(),
)
def test_a_logprob_that_is_no_finite_number_is_refused(value: float, in_top: bool) -> None:
    # 10**400 raised OverflowError (not MalformedRecord) from float(): every device's log
    # reader fell over a result another member stored so.
    entry = ["a", -0.5, [["b", value]]] if in_top else ["a", value, []]
    with pytest.raises(MalformedRecord):
        TokenLogprob.from_wire(stored(entry))
    result = gpu_result()
    with pytest.raises(MalformedRecord):  # the whole result, as the log reads it
        Result.from_wire(result.key, decode(json.dumps(result.to_wire() | {"logprobs": [entry]})))
