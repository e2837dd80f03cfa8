"""Calls made within one turn of the event loop, done as one: a group commit.

Each store write costs a transaction, an envelope (sealed and signed) and an fsync. A server
answering many clients at once makes many small writes in the same moment: the API's adds, the
scheduler's results. ``Grouped`` gathers the calls that arrive before the loop's next turn and
makes one call with all of them; each caller awaits its own answer.

It never waits to gather more: a lone call runs at the next turn, so a quiet node pays nothing,
and a busy one gathers whatever arrived while it was busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Grouped(Generic[T, R]):
    """``await grouped(item)``: ``run`` is called with the items of one loop turn, in order,
    and returns one answer per item.

    If ``run`` raises for a group of several, each item is run again alone, so that one bad
    item (an invalid prompt) fails its own caller only; a group of one passes the exception on.
    An item may thus be run twice: ``run`` must make that harmless (the API's adds carry their
    prompt ids, and adding an id again adds nothing).
    """

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]]) -> None:
        self._run = run
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, answer))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)
        # Shielded: a caller that is cancelled (its client hung up) still has its item run,
        # as it would had it called ``run`` itself a moment earlier.
        return await asyncio.shield(answer)

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
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
