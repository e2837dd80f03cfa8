"""Ollama's shapes translated to syncq's prompts and back (node/ollama_wire.py), in process:
what a body becomes is what the node stores, so each rule is checked on the translation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncq.node import ollama_wire as wire
from syncq.node.http_common import ApiError

from syncq.chat import LlmInput, Message, ToolCall, check
from syncq.client import MeshModel

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=30)
json_objects = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)


def mesh(*models: str) -> list[MeshModel]:
    return [MeshModel(name=m, backend="echo", nodes=("gpu",), warm=()) for m in models]


@given(st.lists(names, min_size=1, max_size=5, unique=True))
def test_every_listed_name_finds_its_model_and_so_does_the_bare_name(found: list[str]) -> None:
    models = mesh(*found)
    for model in models:
        assert wire.find_model(models, wire.listed_name(model.name)) is model
        assert wire.find_model(models, model.name) is model
    assert wire.find_model(models, "not-served:latest") is None or "not-served" in found


def test_a_name_with_a_tag_is_listed_as_it_is() -> None:
    assert wire.listed_name("qwen3:0.6b") == "qwen3:0.6b"
    assert wire.listed_name("smollm2-135m") == "smollm2-135m:latest"
    assert wire.digest("echo") == wire.digest("echo") != wire.digest("echo2")


def test_details_read_the_family_and_size_from_the_name() -> None:
    gemma = MeshModel(name="gemma3-270m", backend="llama", nodes=("a",), warm=())
    assert (
        wire.details(gemma).items()
        >= {"format": "gguf", "family": "gemma3", "parameter_size": "270M"}.items()
    )
    assert wire.capabilities("echo") == ["completion", "tools", "embedding"]
    assert wire.capabilities("openai") == ["completion", "tools"]


def test_options_are_mapped_onto_the_params_and_stops() -> None:
    params, stops = wire.options_params(
        {
            "options": {
                "num_predict": 64,
                "temperature": 0.2,
                "top_k": 5,
                "top_p": 0.9,
                "min_p": 0.05,
                "seed": 7,
                "repeat_penalty": 1.1,
                "frequency_penalty": 0.5,
                "presence_penalty": -0.5,
                "stop": ["\n\n", "User:"],
                "num_thread": 8,  # harmless: accepted, changes nothing
            }
        }
    )
    assert params == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_k": 5,
        "top_p": 0.9,
        "min_p": 0.05,
        "seed": 7,
        "repeat_penalty": 1.1,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }
    assert stops == ("\n\n", "User:")
    # Open WebUI puts num_predict at the top level; options wins where both are given.
    assert wire.options_params({"num_predict": 10})[0] == {"max_tokens": 10}
    assert wire.options_params({"num_predict": 10, "options": {"num_predict": 20}})[0] == {"max_tokens": 20}
    assert wire.options_params({"options": {"num_predict": -1}})[0] == {"max_tokens": wire.MAX_TOKENS}
    assert wire.options_params({"options": {"stop": "END"}})[1] == ("END",)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_ctx": 4096}, "num_ctx"),
        ({"repeat_last_n": 64}, "repeat_last_n"),
        ({"mirostat": 1}, "mirostat"),
        ({"typical_p": 0.5}, "typical_p"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 9}, "temperature"),
        ({"num_predict": 0}, "num_predict"),
        ({"stop": [1]}, "stop"),
        ({"frobnicate": True}, "frobnicate"),
    ],
)
def test_options_that_would_be_dropped_are_refused_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ApiError, match=named) as refused:
        wire.options_params({"options": options})
    assert refused.value.status == 400


@given(json_objects)
def test_tool_call_arguments_go_in_as_json_text_and_come_back_as_the_same_object(arguments: dict) -> None:
    turns = wire.turns_from(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get", "arguments": arguments}}],
            },
        ]
    )
    call = turns[1].tool_calls[0]
    assert json.loads(call.arguments) == arguments
    assert wire.calls_out([call])[0]["function"] == {"index": 0, "name": "get", "arguments": arguments}


def test_tool_results_are_linked_to_their_calls_by_id_name_or_order() -> None:
    calls = [
        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "given", "function": {"name": "time", "arguments": {}}},
        {"function": {"name": "news", "arguments": {}}},
    ]
    turns = wire.turns_from(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": "12:00", "tool_call_id": "given"},  # Open WebUI's way
            {"role": "tool", "content": "sunny", "tool_name": "weather"},  # Ollama's way
            {"role": "tool", "content": "none", "tool_call_id": "made-up"},  # no such id: the oldest left
        ]
    )
    check(LlmInput(messages=turns))  # what the node will accept
    assert [(t.tool_call_id, t.name) for t in turns[3:]] == [
        ("given", "time"),
        ("call_2_0", "weather"),
        ("call_2_2", "news"),
    ]
    assert turns[2].content == "" and [c.name for c in turns[2].tool_calls] == ["weather", "time", "news"]
    with pytest.raises(ApiError, match="answers no earlier tool call"):
        wire.turns_from(
            [{"role": "user", "content": "x"}, {"role": "tool", "content": "y", "tool_name": "z"}]
        )


def test_images_and_bad_turns_are_refused() -> None:
    with pytest.raises(ApiError, match="images"):
        wire.turns_from([{"role": "user", "content": "look", "images": ["aGk="]}])
    with pytest.raises(ApiError, match="role"):
        wire.turns_from([{"role": "robot", "content": "x"}])
    with pytest.raises(ApiError, match="text"):
        wire.turns_from([{"role": "user", "content": ["a", "b"]}])


def test_chat_and_generate_bodies_become_the_prompt_the_node_stores() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "hi"}], "format": schema, "tools": [tool]}
    llm = check(wire.chat_input(body, wire.turns_from(body["messages"]), ("STOP",)))
    assert llm.format is not None and llm.format.type == "json_schema" and dict(llm.format.schema) == schema
    assert [t.name for t in llm.tools] == ["get_weather"] and llm.stop == ("STOP",)
    assert wire.output_format("json") is not None and wire.output_format("") is None
    turns = wire.turns_from([{"role": "user", "content": "hi"}])
    assert wire.chat_input({"system": "Be brief."}, turns, ()).messages[0] == Message(
        role="system", content="Be brief."
    )

    text, mode, llm = wire.generate_input({"prompt": "Why?", "system": "Be brief."}, ())
    assert (text, mode) == ("Why?", "chat")
    assert llm.messages == (Message(role="system", content="Be brief."), Message(role="user", content="Why?"))
    assert wire.generate_input({"prompt": "Once upon", "raw": True}, ()) == (
        "Once upon",
        "complete",
        LlmInput(),
    )
    with pytest.raises(ApiError, match="raw mode"):
        wire.generate_input({"prompt": "x", "raw": True, "system": "y"}, ())
    for field, value in (
        ("think", True),
        ("suffix", "end"),
        ("context", [1, 2]),
        ("template", "{{ .Prompt }}"),
    ):
        with pytest.raises(ApiError, match=field if field != "think" else "thinking"):
            wire.refuse_extras({"model": "m", field: value}, (field,))
    wire.refuse_extras(
        {"model": "m", "think": False, "suffix": "", "context": []}, ("think", "suffix", "context")
    )


def test_usage_becomes_ollamas_counts_in_nanoseconds() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 30, "ms_total": 250, "ms_first_token": 40}
    assert wire.counts(usage) == {
        "total_duration": 250_000_000,
        "load_duration": 0,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 40_000_000,
        "eval_count": 30,
        "eval_duration": 210_000_000,
    }
    assert wire.counts({})["eval_count"] == 0
    assert (wire.done_reason("length"), wire.done_reason("tool_calls"), wire.done_reason("")) == (
        "length",
        "stop",
        "stop",
    )


def test_a_call_whose_arguments_are_not_an_object_is_an_error_not_a_guess() -> None:
    with pytest.raises(ApiError, match="not a JSON object") as bad:
        wire.calls_out([ToolCall(id="c1", name="f", arguments="[1, 2")])
    assert bad.value.status == 502
    assert wire.vectors("[[0.5, 1], [2, 3]]", 2) == [[0.5, 1], [2, 3]]
    with pytest.raises(ApiError):
        wire.vectors("[[0.5]]", 2)


@given(st.integers(-(10**30), 10**30) | st.floats(allow_nan=False))
def test_any_time_another_node_stored_is_written_as_a_time(ms: float) -> None:
    # A presence with last_seen 10**18 (a member's, or a clock gone wrong) raised ValueError
    # ("year is out of range") out of /api/tags on every node.
    shown = wire.timestamp(ms)
    assert shown.endswith("Z") and "1970-01-01" <= shown[:10] <= "9999-12-31"
