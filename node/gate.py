"""A model's turnstile: the jobs a node holds for one model take its slots highest priority
first, not in the order they were claimed.

The scheduler claims prompts ahead of the model (``Scheduler._depth``), so that the model never
waits for a claim to settle. With a first-come lock the claimed ones then ran in claim order: a
chat UI's title request, claimed while an answer was running, ran before the streaming chat the
person was waiting on, queued a moment later with a higher priority (issue 15, Open WebUI).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class Gate:
    """At most ``slots`` holders at once; waiters are let in by the smallest ``order`` key."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self._held = 0
        self._waiting: list[tuple[tuple[int, str], int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()  # ties keep arrival order

    @property
    def held(self) -> int:
        """How many holders are inside now."""
        return self._held

    @contextlib.asynccontextmanager
    async def enter(self, order: tuple[int, str]) -> AsyncIterator[None]:
        """Wait for a slot (``order``: smaller goes first, e.g. ``(-priority, prompt id)``),
        hold it for the block, then let the next waiter in."""
        if self._held < self.slots and not self._waiting:
            self._held += 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (order, next(self._arrivals), future))
            try:
                await future  # the slot was handed over: ``_held`` already counts it
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # handed over just as we were cancelled: pass it on
                else:
                    self._waiting = [w for w in self._waiting if w[2] is not future]
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes straight to it
                return
        self._held -= 1
