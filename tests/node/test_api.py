"""The Python API (``syncq.open`` / ``syncq.aopen``) against real node processes."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from harness import laptop_and_gpu, wait_until

import syncq
from syncq.client import AsyncClient
from syncq.records import Result, RunStatus
from syncq.space import Space

pytestmark = pytest.mark.slow


def test_every_public_name_resolves_and_import_stays_light() -> None:
    for name in syncq.__all__:
        assert getattr(syncq, name) is not None, name
    assert issubclass(syncq.WaitTimeout, syncq.SyncqError)
    # `import syncq` alone must not pull in pycrdt or the store: the CLI starts on it.
    heavy = "('pycrdt', 'syncq.space', 'syncq.client')"
    code = f"import sys, syncq; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_blocking_add_stream_and_result_through_a_running_node(tmp_path: Path, nodes) -> None:
    Space.init(tmp_path / "a", name="gpu").close()
    nodes(tmp_path / "a")
    with syncq.open(tmp_path / "a") as space:
        words = " ".join(f"w{i}" for i in range(12))
        p = space.add(words, model="echo", params={"delay": 1.2})
        chunks = list(space.stream(p.id, timeout=30))
        assert "".join(chunks) == words and len(chunks) > 1  # it streamed, in pieces
        outcome = space.result(p.id, timeout=30)
        assert outcome.ok and outcome.text == words and outcome.node_name == "gpu" and outcome.runs == 1
        models = wait_until(lambda: {m.name: m for m in space.models() if m.warm})  # advertised warm
        assert models["echo"].nodes == models["echo"].warm == ("gpu",)
        assert [e.prompt.id for e in space.log()] == [p.id]


def test_a_timeout_raises_and_leaves_the_prompt_queued(tmp_path: Path) -> None:
    Space.init(tmp_path / "a", name="laptop").close()
    with syncq.open(tmp_path / "a") as space:  # no node runs: nothing will ever answer
        p = space.add("hello", model="echo")
        with pytest.raises(syncq.WaitTimeout, match="stays queued"):
            space.result(p.id, timeout=0.3)
        assert space.get(p.id).status is syncq.Status.QUEUED


def test_asyncio_1000_prompts_in_flight_answered_by_another_node(tmp_path: Path, nodes) -> None:
    """One asyncio process, 1,000 prompts in flight at once, run by a node in another home:
    every answer arrives, the streamed ones stream, and memory stays bounded."""
    laptop_and_gpu(tmp_path, nodes)

    async def scenario() -> tuple[list[syncq.Outcome], list[str], int]:
        async with syncq.aopen(tmp_path / "laptop") as space:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            outcomes = await asyncio.gather(
                *(space.run(f"prompt {i}", model="echo", timeout=240) for i in range(1000))
            )
            streamed = []
            for i in range(3):
                p = space.add(f"a longer answer number {i} in words", model="echo", params={"delay": 0.5})
                streamed.append("".join([chunk async for chunk in space.stream(p.id, timeout=60)]))
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            return outcomes, streamed, grown

    outcomes, streamed, grown_kib = asyncio.run(scenario())
    assert [o.text for o in outcomes] == [f"prompt {i}" for i in range(1000)]
    assert all(o.ok and o.node_name == "gpu" for o in outcomes)
    assert streamed == [f"a longer answer number {i} in words" for i in range(3)]
    assert grown_kib < 200_000, f"memory grew by {grown_kib} KiB for 1,000 prompts in flight"


def test_cancelling_an_awaiting_task_leaves_the_prompt_alone_and_cancel_stops_it(
    tmp_path: Path, nodes
) -> None:
    Space.init(tmp_path / "a", name="gpu").close()
    node = nodes(tmp_path / "a")

    async def scenario() -> None:
        async with syncq.aopen(tmp_path / "a") as space:
            p = space.add("slow " * 20, model="echo", params={"delay": 30})
            waiting = asyncio.ensure_future(space.result(p.id))
            await asyncio.sleep(0.2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            node.wait_event("running", prompt=p.id)
            assert space.get(p.id).status in (syncq.Status.CLAIMED, syncq.Status.RUNNING)
            space.cancel(p.id)
            outcome = await space.result(p.id, timeout=10)
            assert outcome.status is syncq.Status.CANCELLED

    asyncio.run(scenario())


def test_the_async_face_must_be_entered(tmp_path: Path) -> None:
    Space.init(tmp_path / "a", name="laptop").close()
    space = syncq.aopen(tmp_path / "a")
    p = space.add("x", model="echo")

    async def outside() -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await space.result(p.id)

    asyncio.run(outside())
    space.close()


def test_an_announced_client_keeps_no_file_watch_and_wakes_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's own API client (``announced``): no inotify watch and no polling; the node says
    when the store changed (``announce``), and the waiters whose prompt changed wake then."""
    monkeypatch.setattr(syncq.client, "SAFETY_S", 3600.0)  # no safety look within the test
    Space.init(tmp_path / "a", name="laptop").close()

    async def scenario() -> None:
        async with AsyncClient(Space.open(tmp_path / "a"), announced=True) as space:
            p = space.add("hello", model="echo")
            waiting = asyncio.ensure_future(space.result(p.id, timeout=30))
            await asyncio.sleep(0)  # one turn: the task reads the entry (queued) and waits
            assert not waiting.done()
            with Space.open(tmp_path / "a") as node:  # another connection, as the node's is
                node.finish(
                    Result(
                        prompt_id=p.id,
                        node=node.device_id,
                        node_name="node",
                        attempt=1,
                        status=RunStatus.DONE,
                        output="hi",
                        started_at=1,
                        finished_at=2,
                    )
                )
            done, _ = await asyncio.wait({waiting}, timeout=0.3)
            assert not done  # nothing watches the files: the write is not seen by itself
            space.announce()
            space.announce()  # several in one turn of the loop: one look
            outcome = await waiting
            assert outcome.ok and outcome.text == "hi"

    asyncio.run(scenario())


def test_files_go_in_and_results_come_back_as_paths(tmp_path: Path, nodes) -> None:
    laptop_and_gpu(tmp_path, nodes)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(bytes(range(256)) * 5000)  # 1.2 MiB: two chunks
    with syncq.open(tmp_path / "laptop") as space:
        outcome = space.run("look", model="echo", files=[photo], timeout=60)
        assert outcome.ok and [a.name for a in outcome.attachments] == ["photo.jpg"]
        (saved,) = outcome.files  # echo hands the file back; result() fetched and saved it
        assert saved == space.files_folder(outcome.prompt_id) / "photo.jpg"
        assert saved.read_bytes() == photo.read_bytes()

    async def scenario() -> None:
        async with syncq.aopen(tmp_path / "laptop") as space:
            p = space.add("again", model="echo", files=[photo])
            outcome = await space.result(p.id, timeout=60, files_dir=tmp_path / "here")
            assert outcome.files == (tmp_path / "here" / "photo.jpg",)
            assert outcome.files[0].read_bytes() == photo.read_bytes()

    asyncio.run(scenario())
