"""examples/chat_server.py, run as a user runs it, answered by a node in another home."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import laptop_and_gpu, wait_until

from syncq.space import Space

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[2] / "examples" / "chat_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def chat(port: int, lines: list[str], *, hang_up_after: int | None = None) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"connected")
    answers = []
    for i, line in enumerate(lines):
        writer.write(line.encode() + b"\n")
        await writer.drain()
        if hang_up_after == i:
            writer.close()
            return answers
        answers.append((await reader.readline()).decode().rstrip("\n"))
    writer.close()
    return answers


def test_concurrent_conversations_are_answered_by_another_node(tmp_path: Path, nodes) -> None:
    laptop_and_gpu(tmp_path, nodes)
    port = free_port()
    home = str(tmp_path / "laptop")
    server = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE),
            "--home",
            home,
            "--model",
            "echo",
            "--port",
            str(port),
            "--param",
            "delay=0.2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "chat relay on" in server.stdout.readline()

        async def conversations() -> list[list[str]]:
            users = [chat(port, [f"user {u} asks question {q}" for q in range(3)]) for u in range(8)]
            quitter = chat(port, ["a question nobody waits for", "never sent"], hang_up_after=0)
            return await asyncio.gather(*users, quitter)

        *answered, quit_early = asyncio.run(conversations())
        assert answered == [[f"user {u} asks question {q}" for q in range(3)] for u in range(8)]
        assert quit_early == [] and server.poll() is None  # a client hanging up harms nobody
        with Space.open(tmp_path / "laptop") as space:
            wait_until(lambda: len(space.entries(limit=None)) == 25, what="every question in the log")
            assert {e.result.node_name for e in space.entries(limit=None) if e.result} == {"gpu"}
            # Each question went with the conversation before it: its questions and answers.
            third = next(
                e.prompt for e in space.entries(limit=None) if e.prompt.input == "user 5 asks question 2"
            )
            assert third.llm is not None
            assert [(m.role, m.content) for m in third.llm.messages] == [
                ("user", "user 5 asks question 0"),
                ("assistant", "user 5 asks question 0"),
                ("user", "user 5 asks question 1"),
                ("assistant", "user 5 asks question 1"),
                ("user", "user 5 asks question 2"),
            ]
    finally:
        server.terminate()
        server.wait(timeout=10)
