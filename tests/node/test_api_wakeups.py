"""The node and the HTTP API it serves tell each other of their writes (no file watch between
them): a chat answered by the same node never waits for a periodic look."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from harness import api_key

from syncq.space import Space

pytestmark = pytest.mark.slow


def test_chats_answered_by_the_api_s_own_node_never_wait_for_a_safety_look(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "home", name="home").close()
    node = nodes(tmp_path / "home", "--api", "127.0.0.1:0")
    url = node.wait_event("api-listening")["url"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key(tmp_path / "home"), max_retries=0)
    ask = {"model": "echo", "messages": [{"role": "user", "content": "warm up"}]}
    client.chat.completions.create(**ask)  # the echo worker loads
    start = time.monotonic()
    for i in range(20):
        answer = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"question {i}"}]
        )
        assert answer.choices[0].message.content == f"question {i}"
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"streamed {i}"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == f"streamed {i}"
    # 40 answers: a missed announce costs the safety look's 1 s (syncq.client.SAFETY_S) each;
    # here they take some ms each, so even a slow machine stays far below 40 s.
    assert time.monotonic() - start < 20
