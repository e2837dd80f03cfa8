"""Prompts with a conversation, tools or an output format, run by a real node on echo: what the
prompt carries reaches the executor, and why it stopped (finish) and its tool calls reach the log."""

from __future__ import annotations

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
