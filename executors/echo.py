"""``echo``: a deterministic executor for tests and for checking a mesh end to end.

The output is the input, sent word by word. Params: ``delay`` (seconds spent in total, spread
over the words; cancellable), ``fail`` (raise with this message instead), ``crash`` (kill the
worker process outright) and ``hang`` (sleep, deaf to cancel): the last two test isolation.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from .base import ExecutorError, Job, ModelSpec, Output


class EchoExecutor:
    """Echoes the prompt."""

    def load(self, spec: ModelSpec) -> None:
        """Nothing to load."""

    def run(self, job: Job, emit: Callable[[str], None], cancelled: Callable[[], bool]) -> Output:
        """Emit the input word by word, taking ``delay`` seconds in total."""
        if job.params.get("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        if job.params.get("fail"):
            raise ExecutorError(str(job.params["fail"]))
        if job.params.get("hang"):
            time.sleep(float(job.params["hang"]))  # ignores cancel: the manager must kill it
        words = job.input.split(" ")
        delay = float(job.params.get("delay", 0) or 0)
        step = delay / max(len(words), 1)
        for i, word in enumerate(words):
            if cancelled():
                break
            emit(word if i == 0 else " " + word)
            _sleep(step, cancelled)
        return Output(text=job.input, usage={"words": len(words)})

    def unload(self) -> None:
        """Nothing to free."""


def _sleep(seconds: float, cancelled: Callable[[], bool]) -> None:
    """Sleep, waking every 20 ms to see whether the job was cancelled."""
    end = time.monotonic() + seconds
    while not cancelled() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))
