"""Prompts with a conversation, tools or an output format, run by a real node on echo: what the
prompt carries reaches the executor, and why it stopped (finish) and its tool calls reach the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import syncq
from syncq.space import Space

pytestmark = pytest.mark.slow

HISTORY = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "The capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture
def client(tmp_path: Path, nodes):
    Space.init(tmp_path / "a", name="gpu").close()
    nodes(tmp_path / "a")
    with syncq.open(tmp_path / "a") as space:
        yield space


def test_a_conversation_runs_and_its_finish_reaches_the_log(client) -> None:
    outcome = client.run(model="echo", messages=HISTORY, timeout=60)
    assert outcome.ok and outcome.text == "And of Italy?"
    assert outcome.finish == "stop" and outcome.tool_calls == ()
    assert client.get(outcome.prompt_id).result.finish == "stop"


def test_tools_json_stops_max_tokens_and_embeddings_reach_echo_and_come_back(client) -> None:
    tools = (syncq.Tool(name="weather"), syncq.Tool(name="clock"))
    called = client.add("call clock please", model="echo", llm=syncq.LlmInput(tools=tools))
    forced = client.add("Rome?", model="echo", llm=syncq.LlmInput(tools=tools, forced_tool="weather"))
    jsoned = client.add("hi", model="echo", llm=syncq.LlmInput(format=syncq.OutputFormat(type="json_object")))
    stopped = client.add("one two END three", model="echo", llm=syncq.LlmInput(stop=("END",)))
    cut = client.add("a b c d", model="echo", params={"max_tokens": 2})
    embed = client.add("", model="echo", params={"mode": "embed"}, llm=syncq.LlmInput(inputs=("x", "y")))
    outcome = {p.id: client.result(p.id, timeout=60) for p in (called, forced, jsoned, stopped, cut, embed)}
    assert all(o.ok for o in outcome.values())
    first = outcome[called.id]
    assert (first.text, first.finish, [c.name for c in first.tool_calls]) == ("", "tool_calls", ["clock"])
    assert json.loads(first.tool_calls[0].arguments) == {"text": "call clock please"}
    assert [c.name for c in outcome[forced.id].tool_calls] == ["weather"]
    assert json.loads(outcome[jsoned.id].text) == {"echo": "hi"}
    assert (outcome[stopped.id].text, outcome[stopped.id].finish) == ("one two ", "stop")
    assert (outcome[cut.id].text, outcome[cut.id].finish) == ("a b", "length")
    assert outcome[cut.id].usage["prompt_tokens"] == 4 and outcome[cut.id].usage["completion_tokens"] == 2
    vectors = json.loads(outcome[embed.id].text)
    assert len(vectors) == 2 and all(len(v) == 8 for v in vectors)
