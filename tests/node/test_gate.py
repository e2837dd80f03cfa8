"""The per-model gate: held jobs take the model by priority, not in claim order."""

from __future__ import annotations

import asyncio

import pytest
from syncq.node.gate import Gate


def test_waiters_go_in_by_order_not_arrival() -> None:
    async def scenario() -> list[str]:
        gate, ran = Gate(), []
        inside = asyncio.Event()
        release = asyncio.Event()

        async def job(name: str, order: tuple[int, str], hold: asyncio.Event | None = None) -> None:
            async with gate.enter(order):
                ran.append(name)
                if hold is not None:
                    inside.set()
                    await hold.wait()

        first = asyncio.ensure_future(job("running", (0, "a"), release))
        await inside.wait()
        # Claimed ahead in this order while the model is busy: a title (priority 0), then a chat
        # the person is waiting on (priority 1), then another background task.
        later = [
            asyncio.ensure_future(job("title", (0, "b"))),
            asyncio.ensure_future(job("chat", (-1, "c"))),
            asyncio.ensure_future(job("tags", (0, "d"))),
        ]
        while len(gate._waiting) < 3:
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *later)
        return ran

    assert asyncio.run(scenario()) == ["running", "chat", "title", "tags"]


@pytest.mark.parametrize("slots", [1, 2])
def test_a_cancelled_waiter_neither_runs_nor_keeps_a_slot(slots: int) -> None:
    async def scenario() -> tuple[list[str], int]:
        gate, ran = Gate(slots), []
        release = asyncio.Event()

        async def job(name: str, order: tuple[int, str], hold: bool = False) -> None:
            async with gate.enter(order):
                ran.append(name)
                if hold:
                    await release.wait()

        holders = [asyncio.ensure_future(job(f"h{i}", (0, f"{i}"), True)) for i in range(slots)]
        while gate.held < slots:
            await asyncio.sleep(0)
        doomed = asyncio.ensure_future(job("cancelled", (-5, "x")))
        after = asyncio.ensure_future(job("after", (0, "y")))
        while len(gate._waiting) < 2:
            await asyncio.sleep(0)
        doomed.cancel()
        release.set()
        await asyncio.gather(*holders, after)
        assert doomed.cancelled()
        return ran, gate.held

    ran, held = asyncio.run(scenario())
    assert "cancelled" not in ran and ran[-1] == "after" and held == 0


def test_two_slots_run_two_at_once() -> None:
    async def scenario() -> int:
        gate, most, now = Gate(2), 0, 0

        async def job(i: int) -> None:
            nonlocal most, now
            async with gate.enter((0, str(i))):
                now += 1
                most = max(most, now)
                for _ in range(3):
                    await asyncio.sleep(0)
                now -= 1

        await asyncio.gather(*(job(i) for i in range(6)))
        return most

    assert asyncio.run(scenario()) == 2
