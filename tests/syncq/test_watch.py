"""Waiting helpers: ``wait_event`` keeps a cancellation that arrives as its event is set."""

from __future__ import annotations

import asyncio

from syncq.watch import wait_event


def test_a_cancel_that_meets_the_event_is_not_swallowed() -> None:
    # asyncio.wait_for (Python 3.11) returns normally here and the task runs on: a node's job
    # whose stream task was cancelled this way never ended.
    async def scenario() -> str:
        event = asyncio.Event()
        task = asyncio.ensure_future(wait_event(event, 10))
        await asyncio.sleep(0)  # the task is waiting
        event.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "ran on"

    assert asyncio.run(scenario()) == "cancelled"


def test_it_tells_a_set_event_from_a_timeout() -> None:
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        missed = await wait_event(event, 0.01)
        event.set()
        return missed, await wait_event(event, 0.01)

    assert asyncio.run(scenario()) == (False, True)
