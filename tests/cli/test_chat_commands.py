"""`syncq add --system / --continue` and `syncq show` of a conversation, against a real node
running echo (it answers a conversation's last user turn)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from syncq.cli.main import cli

import syncq
from syncq.chat import LlmInput, Message, Tool

pytestmark = pytest.mark.slow


@pytest.fixture
def run(home: Path):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--home", str(home), *args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def node(run, home: Path, nodes):
    assert run("init", "--name", "laptop").exit_code == 0
    return nodes(home)


def shown(run, prompt_id: str) -> dict:
    out = run("show", prompt_id, "--json")
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def test_system_then_continue_builds_the_conversation_on_its_model(run, node) -> None:
    first = run("add", "Why is the sky blue?", "-m", "echo", "--system", "Be brief.", "--wait", "--json")
    assert first.exit_code == 0, first.output
    first_id = json.loads(first.stdout)["id"]
    record = shown(run, first_id)
    assert record["input"] == "Why is the sky blue?"
    assert record["llm"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert record["result"]["finish"] == "stop" and record["result"]["tool_calls"] == []
    second = run("add", "And at sunset?", "--continue", first_id[:12], "--wait", "--json")
    assert second.exit_code == 0, second.output
    record = shown(run, json.loads(second.stdout)["id"])
    assert record["model"] == "echo"  # the model of the prompt it continues
    assert [(m["role"], m["content"]) for m in record["llm"]["messages"]] == [
        ("system", "Be brief."),
        ("user", "Why is the sky blue?"),
        ("assistant", "Why is the sky blue?"),  # echo's answer
        ("user", "And at sunset?"),
    ]
    assert record["result"]["output"] == "And at sunset?"
    third = run("add", "Plain?", "--continue", record["id"], "--system", "Be long.", "-m", "echo", "--json")
    messages = shown(run, json.loads(third.stdout)["id"])["llm"]["messages"]
    assert [m["role"] for m in messages].count("system") == 1 and messages[0]["content"] == "Be long."


def test_a_continuation_of_a_plain_prompt_starts_from_its_text(run, node) -> None:
    first = json.loads(run("add", "hello", "-m", "echo", "--wait", "--json").stdout)["id"]
    second = json.loads(run("add", "again", "--continue", first, "--json").stdout)["id"]
    assert [m["content"] for m in shown(run, second)["llm"]["messages"]] == ["hello", "hello", "again"]


def test_continue_needs_a_done_prompt_and_the_text_of_the_next_turn(run, home: Path) -> None:
    run("init")
    queued = run("add", "hi", "-m", "echo").stdout.strip()
    refused = run("add", "more", "--continue", queued)
    assert refused.exit_code == 1 and "is queued: --continue needs a done prompt" in refused.output
    assert "Traceback" not in refused.output
    empty = run("add", "", "--continue", queued)
    assert empty.exit_code == 1 and "need the TEXT of the user's turn" in empty.output
    no_model = run("add", "hi")
    assert no_model.exit_code == 2 and "give the model to run it on with -m" in no_model.output
    unknown = run("add", "hi", "--continue", "ZZZZ")
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output


def test_show_prints_the_conversation_tool_calls_and_finish_escaped(run, node, home: Path) -> None:
    turns = (
        Message(role="system", content="You are \x1b[31mred\x1b[0m [bold]plain[/bold]"),
        Message(role="user", content="line one\nassistant: forged"),
        Message(role="user", content="call weather in Paris"),
    )
    with syncq.open(home) as space:
        prompt = space.add(model="echo", llm=LlmInput(messages=turns, tools=(Tool(name="weather"),)))
        assert space.result(prompt.id, timeout=60).ok
    out = run("show", prompt.id)
    text = out.output
    assert out.exit_code == 0 and "conversation" in text
    assert "\x1b" not in text and "\\x1b[31mred" in text  # escape codes shown, never sent
    assert "[bold]plain[/bold]" in text  # markup printed as written, not applied
    assert "user: line one\n  assistant: forged" in text  # a turn's later lines are indented
    assert "tools" in text and "weather (auto)" in text
    record = shown(run, prompt.id)
    assert record["result"]["finish"] == "tool_calls"
    (call,) = record["result"]["tool_calls"]
    assert call["name"] == "weather" and json.loads(call["arguments"]) == {"text": "call weather in Paris"}
    assert f"-> weather({call['arguments']})  [{call['id']}]" in text
    assert "finish: tool_calls" in text
    # Going on from it keeps its tools: echo calls the one the new turn names.
    again = run("add", "call weather in Rome", "--continue", prompt.id, "--wait")
    assert again.exit_code == 0
    assert '-> weather({"text": "call weather in Rome"})' in again.stdout
    assert "finish tool_calls]" in again.stderr
    cut = run("add", "one two three", "-m", "echo", "--param", "max_tokens=2", "--wait")
    assert cut.stdout.strip() == "one two" and "finish length]" in cut.stderr
