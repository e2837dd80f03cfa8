"""Keeping the node's long-running tasks alive: a crashed task is logged and restarted.

Each of the node's loops (the portal, the scheduler, discovery, the watcher, the heartbeat,
presence, the HTTP API, a relay's forget loop) runs under ``Supervisor.keep``. An exception
that escapes one is a bug of ours (or a broken environment, such as a portal folder replaced by
a file): it is logged with its traceback, counted, and the task is started again after a delay
that doubles from ``FIRST_S`` to ``MAX_S`` (and falls back to ``FIRST_S`` once a run lasted
``HEALTHY_S``), so a task that crashes at once does not spin. Without this a task that raised
simply ended, silently, and the node ran on without it.

The counts are handed to ``report`` (the node writes them to the store's ``node.tasks``
metadata, which `syncq status` shows while the node runs).
"""

from __future__ import annotations

import asyncio
import random
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from .logs import NodeLog

FIRST_S = 0.5
MAX_S = 60.0
HEALTHY_S = 60.0  # a run this long resets the delay


@dataclass(slots=True)
class TaskHealth:
    """What happened to one supervised task so far."""

    restarts: int = 0
    last_error: str = ""
    last_error_at: int = 0  # wall-clock ms


class Supervisor:
    """Runs tasks, restarting each that crashes."""

    def __init__(
        self, log: NodeLog, report: Callable[[dict[str, TaskHealth]], None], clock: Callable[[], int]
    ) -> None:
        self.log = log
        self.report = report
        self.clock = clock
        self.health: dict[str, TaskHealth] = {}

    def start(self, name: str, work: Callable[[], Coroutine[object, object, None]]) -> asyncio.Task[None]:
        """Run ``work()`` as task ``name`` until it returns or is cancelled; if it raises, start
        it again (a fresh coroutine from ``work``) after the backoff."""
        return asyncio.create_task(self.keep(name, work), name=name)

    async def keep(self, name: str, work: Callable[[], Coroutine[object, object, None]]) -> None:
        """The loop behind ``start``."""
        loop = asyncio.get_running_loop()
        delay = FIRST_S
        while True:
            began = loop.time()
            try:
                await work()
                return  # ended on its own (e.g. the API found its port taken): not a crash
            except Exception as exc:  # a task must never die silently: log, count, restart
                delay = FIRST_S if loop.time() - began >= HEALTHY_S else delay
                self._crashed(name, exc, traceback.format_exc(), delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, MAX_S)
            self.log.event("task-restarted", level="warning", task=name, restarts=self.health[name].restarts)

    def ended(self, task: asyncio.Future[None]) -> None:
        """A done-callback for one-shot background work (``Node.spawn``): one that raised is
        logged with its traceback instead of vanishing ("exception was never retrieved")."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        trace = "".join(traceback.format_exception(exc)).rstrip()
        name = task.get_name() if isinstance(task, asyncio.Task) else "background"
        reason = f"{type(exc).__name__}: {exc}"
        self.log.event("job-failed", level="error", task=name, reason=reason, traceback=trace)

    def _crashed(self, name: str, exc: Exception, trace: str, delay: float) -> None:
        health = self.health.setdefault(name, TaskHealth())
        health.restarts += 1
        health.last_error = f"{type(exc).__name__}: {exc}"
        health.last_error_at = self.clock()
        reason, trace = health.last_error, trace.rstrip()
        self.log.event("task-crashed", level="error", task=name, reason=reason, delay=delay, traceback=trace)
        try:
            self.report(self.health)
        except Exception as failed:  # the store may be what broke: the log has it already
            self.log.event("store-failed", level="error", reason=f"{type(failed).__name__}: {failed}")
