"""Calls made within one turn of the event loop, done as one: a group commit.

Each store write costs a transaction, an envelope (sealed and signed) and an fsync. A server
answering many clients at once makes many small writes in the same moment: the API's adds, the
scheduler's results. ``Grouped`` gathers the calls that arrive before the loop's next turn and
makes one call with all of them; each caller awaits its own answer.

It never waits to gather more unless its owner says more is on the way (``hold``): a lone call
runs at the next turn, so a quiet node pays nothing, and a busy one gathers whatever arrived
while it was busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from syncq.batching import by_size as by_size  # the size rule groups follow too

T = TypeVar("T")
R = TypeVar("R")


class Grouped(Generic[T, R]):
    """``await grouped(item)``: ``run`` is called with the items of one loop turn, in order,
    and returns one answer per item.

    If ``run`` raises for a group of several, each item is run again alone, so that one bad
    item (an invalid prompt) fails its own caller only; a group of one passes the exception on.
    An item may thus be run twice: ``run`` must make that harmless (the API's adds carry their
    prompt ids, and adding an id again adds nothing).

    ``hold``: whether more items are on the way (the scheduler: runs that will end in a few
    ms). While it says so, a group waits for them, at most ``hold_s`` after its first item and
    until it has ``most`` items; each new item asks again.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], Sequence[R]],
        *,
        hold: Callable[[], bool] | None = None,
        hold_s: float = 0.0,
        most: int = 64,
    ) -> None:
        self._run = run
        self._hold, self._hold_s, self._most = hold, hold_s, most
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._due_soon = False
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, answer))
        if not self._due_soon:
            self._due_soon = True
            loop.call_soon(self._due)
        # Shielded: a caller that is cancelled (its client hung up) still has its item run,
        # as it would had it called ``run`` itself a moment earlier.
        return await asyncio.shield(answer)

    def _due(self) -> None:
        self._due_soon = False
        if not self._waiting:
            return
        if self._hold is not None and len(self._waiting) < self._most and self._hold():
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._hold_s, self._flush)
            return
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        try:
            answers = self._answers([item for item, _ in waiting])
        except Exception as exc:
            if len(waiting) == 1:
                _settle(waiting[0][1], exc)
                return
            for item, answer in waiting:
                try:
                    _settle(answer, self._answers([item])[0])
                except Exception as alone:
                    _settle(answer, alone)
            return
        except BaseException as exc:  # no caller is left waiting for ever
            for _, answer in waiting:
                _settle(answer, RuntimeError(f"the group's run was interrupted: {exc!r}"))
            raise
        for (_, answer), got in zip(waiting, answers, strict=True):
            _settle(answer, got)

    def _answers(self, items: Sequence[T]) -> Sequence[R]:
        answers = self._run(items)
        if len(answers) != len(items):
            raise RuntimeError(f"a group of {len(items)} got {len(answers)} answers")
        return answers


def _settle(answer: asyncio.Future[R], outcome: R | Exception) -> None:
    if answer.done():
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
