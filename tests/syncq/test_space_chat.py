"""Prompts that carry a conversation, tools or an output format (``Space.add(messages=, llm=)``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import syncq
from syncq.chat import LlmInput, Message, OutputFormat, Tool, ToolCall, Unable
from syncq.crypto import MAX_ENVELOPE_SIZE
from syncq.errors import InvalidInput
from syncq.space import NewPrompt, Space

HISTORY = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "The capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def serving(space: Space, **backends: str) -> None:
    """What a node of this home notes of the mesh's models (node/daemon.py's mesh.models)."""
    space.store.set_meta("mesh.models", json.dumps(backends))


def test_a_conversation_is_stored_whole_and_shows_its_last_user_turn(
    space: Space, home: Path, member: Callable[[str], Space]
) -> None:
    added = space.add("", model="echo", messages=HISTORY)
    assert added.input == "And of Italy?"
    assert added.llm is not None
    assert [(m.role, m.content) for m in added.llm.messages] == [(d["role"], d["content"]) for d in HISTORY]
    gpu = member("gpu")
    gpu.receive(space.envelopes())  # another device reads it from the encrypted log
    assert gpu.show(added.id).prompt.llm == added.llm
    space.close()
    with Space.open(home) as again:
        assert again.show(added.id).prompt == added


def test_a_text_given_with_messages_is_kept_and_message_objects_work(space: Space) -> None:
    turns = [Message(role="system", content="Be brief."), Message(role="user", content="hi")]
    added = space.add("a title of my own", model="echo", messages=turns)
    assert added.input == "a title of my own" and added.llm == LlmInput(messages=tuple(turns))


def test_openai_shaped_tool_round_trips_convert(space: Space) -> None:
    turns = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"c":"Paris"}'},
                },
                {"id": "call_2", "name": "clock", "arguments": {"tz": "CET"}},
                ToolCall(id="call_3", name="clock", arguments="{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "sunny"},
    ]
    added = space.add("", model="echo", messages=turns)
    assert added.input == "Weather in Paris?"
    assert added.llm is not None
    calls = added.llm.messages[1].tool_calls
    assert calls == (
        ToolCall(id="call_1", name="weather", arguments='{"c":"Paris"}'),
        ToolCall(id="call_2", name="clock", arguments='{"tz": "CET"}'),
        ToolCall(id="call_3", name="clock", arguments="{}"),
    )
    assert added.llm.messages[1].content == ""
    assert added.llm.messages[2] == Message(
        role="tool", content="sunny", tool_call_id="call_1", name="weather"
    )


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ("hello", "messages must be a list"),
        ({"role": "user", "content": "hi"}, "messages must be a list"),
        ([], "messages is empty"),
        (["hi"], "messages[0] is a str"),
        ([{"role": "robot", "content": "hi"}], "messages[0]: role 'robot' is not one of"),
        ([{"role": "user", "content": ["a", "b"]}], "messages[0]: content must be text"),
        ([{"role": "user", "content": "hi", "colour": "red"}], "messages[0] has unknown fields: colour"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": "x"}],
            "messages[1]: tool_calls",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c"}]}],
            "messages[0].tool_calls[0] needs an id and a name",
        ),
        ([{"role": "assistant", "tool_calls": [7]}], "messages[0].tool_calls[0] is not a dict"),
        ([{"role": "user", "content": "hi", "name": 3}], "messages[0]: name must be text"),
        ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], "answers no earlier tool call"),
        ([{"role": "user", "content": "  "}], "the prompt is empty"),
    ],
)
def test_malformed_messages_are_refused_in_words_and_store_nothing(
    space: Space, messages: object, says: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(says)):
        space.add("", model="echo", messages=messages)  # type: ignore[arg-type]
    assert space.entries() == []


def test_messages_and_llm_together_or_an_llm_that_breaks_the_rules_are_refused(space: Space) -> None:
    with pytest.raises(InvalidInput, match="not both"):
        space.add("", model="echo", messages=HISTORY, llm=LlmInput())
    forced = LlmInput(tools=(Tool(name="weather"),), forced_tool="clock")
    with pytest.raises(InvalidInput, match="'clock', which is not among the tools"):
        space.add("hi", model="echo", llm=forced)
    with pytest.raises(InvalidInput, match="at most 4 strings"):
        space.add("hi", model="echo", llm=LlmInput(stop=tuple("abcde")))
    with pytest.raises(InvalidInput, match=r"must be a syncq\.LlmInput"):
        space.add("hi", model="echo", llm={"messages": []})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):  # one bad prompt of a batch: none is stored
        space.add_many([NewPrompt(text="fine", model="echo"), NewPrompt(text="", model="echo", messages=[])])
    assert space.entries() == []


def test_a_whole_llm_field_is_stored_and_embed_texts_fill_an_empty_text(space: Space) -> None:
    llm = LlmInput(
        messages=(Message(role="user", content="Name a colour"),),
        tools=(Tool(name="paint", description="paints", parameters={"type": "object"}),),
        tool_choice="required",
        format=OutputFormat(type="json_object"),
        stop=("\n\n", "END"),
    )
    added = space.add("", model="echo", llm=llm)
    assert (added.input, space.show(added.id).prompt.llm) == ("Name a colour", llm)
    embed = space.add("", model="echo", params={"mode": "embed"}, llm=LlmInput(inputs=("one", "two")))
    assert embed.input == "one" and embed.llm == LlmInput(inputs=("one", "two"))


def test_what_the_models_backend_cannot_do_is_refused_at_add(space: Space) -> None:
    serving(space, gpt="openai", tiny="llama", plugin="my-backend", whisper="whisper")
    with pytest.raises(Unable, match=r"the model 'gpt' \(openai\) cannot make embeddings"):
        space.add("a text", model="gpt", params={"mode": "embed"})
    assert space.add("hi", model="gpt", llm=LlmInput(tools=(Tool(name="t"),))).llm is not None  # it can
    assert space.add("a text", model="tiny", params={"mode": "embed"}).params == {"mode": "embed"}
    assert space.add("hi", model="plugin", messages=HISTORY).llm is not None  # unknown: trusted
    assert space.add("hi", model="not-advertised", params={"mode": "embed"}).llm is None  # not known yet
    with pytest.raises(InvalidInput, match="only llm prompts carry a conversation"):
        space.add("hi", model="whisper", messages=HISTORY)
    assert len(space.entries()) == 4


def test_echo_refuses_nothing_it_can_do(space: Space) -> None:
    serving(space, echo="echo")
    llm = LlmInput(messages=tuple(Message(**m) for m in HISTORY), format=OutputFormat(type="json_object"))  # type: ignore[arg-type]
    assert space.add("", model="echo", llm=llm).input == "And of Italy?"


def test_long_conversations_are_split_into_envelopes_peers_accept(space: Space) -> None:
    """Each conversation counts for its size in a batch: 20 of nearly 1 MiB went into one
    envelope of 20 MiB before, which every peer refuses (over MAX_ENVELOPE_SIZE)."""
    before = space.store.count()
    long = [{"role": "user", "content": "x" * 200_000} for _ in range(4)] + [
        {"role": "user", "content": "go"}
    ]
    prompts = space.add_many([NewPrompt(text="", model="echo", messages=long) for _ in range(20)])
    rows = list(space.store.rows(space.device.public_key))[before:]
    assert len(prompts) == 20 and len(rows) >= 20
    assert max(len(row.data) for row in rows) < MAX_ENVELOPE_SIZE
    assert len(space.log) == 20


def test_the_client_takes_messages_and_the_names_are_exported(space: Space, home: Path) -> None:
    space.close()
    with syncq.open(home) as client:
        added = client.add(model="echo", messages=[syncq.Message(role="user", content="hi there")])
        assert added.input == "hi there" and client.get(added.id).prompt.llm == added.llm
        llm = syncq.LlmInput(stop=("END",), format=syncq.OutputFormat(type="json_object"))
        assert client.add("x", model="echo", llm=llm).llm == llm
    assert {"Message", "LlmInput", "Tool", "ToolCall", "OutputFormat"} <= set(syncq.__all__)


def test_a_conversation_that_is_not_unicode_is_refused_in_words(space: Space) -> None:
    # A lone surrogate (JSON's "\ud800" from an HTTP body): it raised UnicodeEncodeError.
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        space.add("hi", model="echo", messages=[{"role": "user", "content": "bad \ud800"}])
    assert space.entries() == []
