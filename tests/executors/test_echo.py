"""The echo executor, run in this process: what it answers a conversation, stops, max_tokens,
an output format, tools and embeddings, and what it says it used."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syncq.executors.base import Job, Output
from syncq.executors.echo import EchoExecutor

from syncq.chat import LlmInput, Message, OutputFormat, Tool, ToolCall

HISTORY = (
    Message(role="system", content="Answer in one word."),
    Message(role="user", content="The capital of France?"),
    Message(role="assistant", content="Paris."),
    Message(role="user", content="And of Italy?"),
)
TOOLS = (Tool(name="weather"), Tool(name="weather_now"), Tool(name="clock"))


def run(text: str = "", llm: LlmInput | None = None, **params: object) -> tuple[Output, list[str]]:
    chunks: list[str] = []
    job = Job(prompt_id="01JDX4ECHO", input=text, params=params, llm=llm)
    out = EchoExecutor().run(job, chunks.append, lambda: False)
    assert "".join(chunks) == out.text  # what streamed is what it answered
    return out, chunks


def test_a_plain_prompt_is_echoed_with_honest_usage() -> None:
    out, chunks = run("one two  three")
    assert (out.text, out.finish, chunks) == ("one two  three", "stop", ["one", " two", " ", " three"])
    assert dict(out.usage) == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_a_conversation_answers_its_last_user_turn_and_counts_every_turn() -> None:
    out, _ = run("And of Italy?", LlmInput(messages=HISTORY))
    assert out.text == "And of Italy?"
    assert out.usage["prompt_tokens"] == 4 + 4 + 1 + 3  # system, user, assistant, user
    assert out.usage["completion_tokens"] == 3


def test_max_tokens_keeps_that_many_words_and_says_length() -> None:
    out, _ = run("a b c d e", max_tokens=2)
    assert (out.text, out.finish, out.usage["completion_tokens"]) == ("a b", "length", 2)
    assert run("a b", max_tokens=2)[0].finish == "stop"  # exactly enough: it ended by itself


def test_the_earliest_stop_string_cuts_the_answer() -> None:
    llm = LlmInput(stop=("END", "##"))
    out, _ = run("one ## two END three", llm)
    assert (out.text, out.finish) == ("one ", "stop")
    assert run("one END two", stop="two")[0].text == "one END "  # the stop param counts too
    assert run("one END two", LlmInput(stop=("two",)), stop="END")[0].text == "one "
    # A stop beyond max_tokens words is never reached.
    beyond, _ = run("a b c END", LlmInput(stop=("END",)), max_tokens=2)
    assert (beyond.text, beyond.finish) == ("a b", "length")


def test_json_output_parses() -> None:
    for fmt in (
        OutputFormat(type="json_object"),
        OutputFormat(type="json_schema", schema={"type": "object"}),
    ):
        out, _ = run('say "hi"', LlmInput(format=fmt))
        assert json.loads(out.text) == {"echo": 'say "hi"'} and out.finish == "stop"


def test_a_required_or_forced_tool_is_called_with_no_text() -> None:
    out, chunks = run("Weather in Paris?", LlmInput(tools=TOOLS, tool_choice="required"))
    assert (out.text, chunks, out.finish) == ("", [], "tool_calls")
    (call,) = out.tool_calls
    assert call.name == "weather" and json.loads(call.arguments) == {"text": "Weather in Paris?"}
    assert call.id.startswith("call_") and ToolCall.from_wire(call.to_wire()) == call
    forced, _ = run("Weather in Paris?", LlmInput(tools=TOOLS, forced_tool="clock"))
    assert [c.name for c in forced.tool_calls] == ["clock"] and forced.tool_calls[0].id != call.id
    assert run("Weather in Paris?", LlmInput(tools=TOOLS, tool_choice="required"))[0] == out  # stable


def test_auto_calls_the_tool_the_last_user_turn_names() -> None:
    turns = (*HISTORY, Message(role="user", content="call weather_now for Rome"))
    out, _ = run("", LlmInput(messages=turns, tools=TOOLS))
    assert [c.name for c in out.tool_calls] == ["weather_now"]  # the longest name that fits
    assert json.loads(out.tool_calls[0].arguments) == {"text": "call weather_now for Rome"}
    for text in ("call weathering", "please call weather", "hello"):
        answered, _ = run(text, LlmInput(tools=TOOLS))
        assert (answered.text, answered.tool_calls, answered.finish) == (text, (), "stop")
    unoffered, _ = run("call weather", LlmInput(tools=TOOLS, tool_choice="none"))
    assert unoffered.tool_calls == () and unoffered.text == "call weather"


def test_embed_gives_one_unit_vector_per_text() -> None:
    out, _ = run("ignored", LlmInput(inputs=("one", "two", "one")), mode="embed")
    vectors = json.loads(out.text)
    assert len(vectors) == 3 and all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-4) for v in vectors)
    assert out.usage["prompt_tokens"] == 3 and " " not in out.text  # compact
    alone, _ = run("just me", mode="embed")
    assert len(json.loads(alone.text)) == 1 and alone.usage["prompt_tokens"] == 2


@given(st.text(alphabet="ab ", max_size=40), st.integers(min_value=1, max_value=10))
def test_max_tokens_never_lets_more_words_through(text: str, max_tokens: int) -> None:
    job = Job(prompt_id="p", input=text, params={"max_tokens": max_tokens})
    out = EchoExecutor().run(job, lambda _: None, lambda: False)
    assert len(out.text.split()) == min(max_tokens, len(text.split()))
    assert text.startswith(out.text)
    assert out.finish == ("length" if len(text.split()) > max_tokens else "stop")


def test_cancel_stops_the_stream() -> None:
    chunks: list[str] = []
    job = Job(prompt_id="p", input="a b c d", params={})
    EchoExecutor().run(job, chunks.append, lambda: len(chunks) >= 2)
    assert chunks == ["a", " b"]


@pytest.mark.parametrize("mode", ["chat", "complete"])
def test_both_text_modes_echo(mode: str) -> None:
    assert run("x y", mode=mode)[0].text == "x y"
