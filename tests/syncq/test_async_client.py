"""The asyncio client says which prompts it streams now: a node whose API streams a chat to a
client writes the first words into the log at once, not after its quiet start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import syncq
from syncq.records import Result, RunStatus
from syncq.space import Space


def test_streaming_is_true_while_a_stream_is_followed_and_false_after(tmp_path: Path) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
        prompt = first.add("hello there", model="echo")

    async def main() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        async with syncq.aopen(home) as client:
            assert not client.streaming(prompt.id)
            with Space.open(home) as node:  # another connection writes, as a node does
                chunks = client.stream(prompt.id[:12], timeout=30)  # a prefix: the id is resolved
                waits = client.stream(prompt.id, timeout=30, live=False)  # only waits for the end
                node.append_stream(prompt.id, "hello")
                assert await anext(waits) == "hello" and not client.streaming(prompt.id)
                seen.append((await anext(chunks), client.streaming(prompt.id)))
                node.finish(
                    Result(
                        prompt_id=prompt.id,
                        node=node.device_id,
                        node_name="a",
                        attempt=1,
                        status=RunStatus.DONE,
                        output="hello there",
                        started_at=1,
                        finished_at=2,
                    )
                )
                seen += [(chunk, client.streaming(prompt.id)) async for chunk in chunks]
                assert [chunk async for chunk in waits] == [" there"]
            seen.append(("after", client.streaming(prompt.id)))
        return seen

    assert asyncio.run(main()) == [("hello", True), (" there", True), ("after", False)]
