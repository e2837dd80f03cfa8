"""The asyncio client's streams: it says which prompts it streams now, and shows the output
that the node of its process hands over (``live``) before the log has it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import syncq
from syncq.ids import PromptId
from syncq.records import Claim, Result, RunStatus
from syncq.space import Space


def done(node: Space, prompt_id: str, *, attempt: int, output: str) -> Result:
    """The result a node writes for a run that ended well."""
    return Result(
        prompt_id=PromptId(prompt_id),
        node=node.device_id,
        node_name=node.name,
        attempt=attempt,
        status=RunStatus.DONE,
        output=output,
        started_at=1,
        finished_at=2,
    )


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
                node.finish(done(node, prompt.id, attempt=1, output="hello there"))
                seen += [(chunk, client.streaming(prompt.id)) async for chunk in chunks]
                assert [chunk async for chunk in waits] == [" there"]
            seen.append(("after", client.streaming(prompt.id)))
        return seen

    assert asyncio.run(main()) == [("hello", True), (" there", True), ("after", False)]


def test_live_output_streams_before_the_log_has_it_and_only_for_the_running_attempt(tmp_path: Path) -> None:
    with Space.init(tmp_path / "a", name="a") as first:
        home = first.paths.root
        prompt = first.add("hello there", model="echo")
        claim = Claim(prompt_id=prompt.id, node=first.device_id, attempt=2, heartbeat=1, running=True)
        first.put_claim(claim)

    async def main() -> list[str]:
        said: list[str] = ["hel"]  # the runner's list of the attempt's chunks, as it grows
        async with syncq.aopen(home) as client:
            client.live(prompt.id, 2, said)  # not kept: nobody streams it yet
            chunks = client.stream(prompt.id, timeout=30)
            first = asyncio.ensure_future(anext(chunks))
            await asyncio.sleep(0)  # the stream follows the prompt now (it looked once)
            assert client.streaming(prompt.id) and not first.done()
            client.live(prompt.id, 1, ["an old attempt's words"])  # not the running attempt
            for _ in range(5):
                await asyncio.sleep(0)
            assert not first.done()
            said.append("lo")  # the stream began after the first chunk: it still gets it all
            client.live(prompt.id, 2, said)
            got = [await first]
            with Space.open(home) as node:  # the log catches up with what was handed over
                node.append_stream(prompt.id, "hello")
                node.finish(done(node, prompt.id, attempt=2, output="hello there"))
                got += [chunk async for chunk in chunks]
        return got

    got = asyncio.run(main())
    assert got == ["hello", " there"]
